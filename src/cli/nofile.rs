//! The open-file limit at start (issue 11): every client connection takes
//! a descriptor, and the usual soft default of 1,024 is reached by a
//! modest fleet. The hard limit is what the operator allowed us, so the
//! soft limit is raised to it; if the result is still low, a warn line
//! says how to raise it.

/// Below this many descriptors `serve` warns at start: room for a few
/// thousand clients plus Redis connections and the runtime's own.
pub(super) const LOW: u64 = 4096;

/// The soft limit to ask for, given the current `soft` and `hard` ones:
/// the hard limit, never less than what we have.
pub(super) fn target(soft: u64, hard: u64) -> u64 {
    soft.max(hard)
}

/// The warn line for a resulting limit of `limit`, if it is low.
pub(super) fn advice(limit: u64) -> Option<String> {
    (limit < LOW).then(|| {
        format!(
            "open-file limit is {limit} (below {LOW}): each client connection takes one, and at the limit new clients wait; raise it with `ulimit -n`, LimitNOFILE= in a systemd unit or --ulimit nofile= with docker"
        )
    })
}

/// Raises the soft RLIMIT_NOFILE to the hard one where the OS lets us,
/// and warns when the limit is still low.
#[cfg(unix)]
pub(super) fn raise() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the rlimit we pass and nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        let e = std::io::Error::last_os_error();
        tracing::debug!(error = %e, "cannot read the open-file limit");
        return;
    }
    // rlim_t is u64 on Linux and macOS; the conversion is for the rest.
    let (soft, hard) = (to_u64(lim.rlim_cur), to_u64(lim.rlim_max));
    let mut limit = soft;
    let wanted = target(soft, hard);
    if wanted > soft {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the rlimit we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit = wanted;
            tracing::debug!(from = soft, to = wanted, "raised the open-file limit");
        } else {
            // macOS refuses an unlimited soft NOFILE; keep what we have.
            let e = std::io::Error::last_os_error();
            tracing::debug!(error = %e, soft, hard, "cannot raise the open-file limit");
        }
    }
    if let Some(line) = advice(limit) {
        tracing::warn!("{line}");
    }
}

/// Nothing to raise where there is no RLIMIT_NOFILE.
#[cfg(not(unix))]
pub(super) fn raise() {}

/// `v` as u64, saturating: RLIM_INFINITY stays the largest value.
#[cfg(unix)]
#[allow(clippy::useless_conversion)] // rlim_t is u64 on the common targets
fn to_u64(v: libc::rlim_t) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_goes_up_to_the_hard_one_never_down() {
        assert_eq!(target(1024, 524_288), 524_288);
        assert_eq!(target(1024, u64::MAX), u64::MAX);
        assert_eq!(target(64, 64), 64);
        // A soft limit above the hard one cannot happen, but is kept.
        assert_eq!(target(2048, 1024), 2048);
    }

    #[test]
    fn a_low_limit_is_warned_about_with_how_to_raise_it() {
        let line = advice(1024).expect("1024 is low");
        assert!(line.contains("open-file limit is 1024"), "{line}");
        assert!(line.contains("ulimit -n"), "{line}");
        assert!(line.contains("LimitNOFILE"), "{line}");
        assert_eq!(advice(LOW), None);
        assert_eq!(advice(u64::MAX), None);
    }
}
