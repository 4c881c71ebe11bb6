//! CPU time of the processes taking part (servers, Redis, the load
//! generator itself), read from `/proc`, so each scenario can say where the
//! machine's cores went.

use std::time::Duration;

/// A process to watch, by a display name and its PID.
#[derive(Debug, Clone)]
pub struct Watched {
    /// Shown in reports, e.g. `redis`.
    pub name: String,
    /// The system under test whose server side this process is part of
    /// (`discovered`, `etcd`), if any: its CPU counts in that system's
    /// server CPU per call.
    pub system: Option<String>,
    /// `None` for the load generator itself (`/proc/self`).
    pub pid: Option<u32>,
}

impl Watched {
    /// Parses `[SYSTEM/]NAME=PID`, e.g. `discovered/redis=1234`.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (who, pid) = spec
            .split_once('=')
            .ok_or_else(|| format!("expected [SYSTEM/]NAME=PID, got {spec:?}"))?;
        let pid = pid.parse().map_err(|_| format!("bad PID in {spec:?}"))?;
        let (system, name) = match who.split_once('/') {
            Some((system, name)) => (Some(system.to_string()), name),
            None => (None, who),
        };
        if name.is_empty() {
            return Err(format!("no process name in {spec:?}"));
        }
        Ok(Self {
            name: name.to_string(),
            system,
            pid: Some(pid),
        })
    }

    /// The load generator's own process.
    pub fn this_process() -> Self {
        Self {
            name: "loadgen".into(),
            system: None,
            pid: None,
        }
    }

    /// User plus system CPU time used so far, all threads; `None` if the
    /// process is gone or `/proc` is unreadable.
    fn cpu_time(&self) -> Option<Duration> {
        let path = match self.pid {
            Some(pid) => format!("/proc/{pid}/stat"),
            None => "/proc/self/stat".into(),
        };
        let stat = std::fs::read_to_string(path).ok()?;
        let ticks = parse_stat_ticks(&stat)?;
        Some(Duration::from_secs_f64(
            ticks as f64 / clock_ticks_per_sec(),
        ))
    }
}

/// utime + stime (fields 14 and 15) of a `/proc/PID/stat` line, in clock
/// ticks. The command name (field 2) may hold spaces, so fields are
/// counted from its closing parenthesis.
fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let mut fields = after_comm.split_whitespace();
    // after_comm starts at field 3 (state); utime is field 14.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Busy CPU time of the whole machine so far (all cores, everything but
/// idle and I/O wait), from the first line of `/proc/stat`.
fn machine_busy() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    parse_machine_busy(stat.lines().next()?)
        .map(|ticks| Duration::from_secs_f64(ticks as f64 / clock_ticks_per_sec()))
}

/// user + nice + system + irq + softirq + steal of a `cpu ...` line, in
/// clock ticks (guest time is already inside user).
fn parse_machine_busy(line: &str) -> Option<u64> {
    let mut fields = line.strip_prefix("cpu ")?.split_whitespace();
    let mut next = || fields.next()?.parse::<u64>().ok();
    let (user, nice, system, _idle, _iowait) = (next()?, next()?, next()?, next()?, next()?);
    let (irq, softirq, steal) = (next()?, next()?, next()?);
    Some(user + nice + system + irq + softirq + steal)
}

/// CPU times of every watched process, and of the machine, at one moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    procs: Vec<Option<Duration>>,
    machine: Option<Duration>,
}

/// The watched processes.
#[derive(Debug, Clone, Default)]
pub struct CpuWatch {
    procs: Vec<Watched>,
}

impl CpuWatch {
    /// Watches `procs`, in this order in reports.
    pub fn new(procs: Vec<Watched>) -> Self {
        Self { procs }
    }

    /// The watched processes, in report order.
    pub fn procs(&self) -> &[Watched] {
        &self.procs
    }

    /// Reads every watched process's CPU time now.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            procs: self.procs.iter().map(Watched::cpu_time).collect(),
            machine: machine_busy(),
        }
    }

    /// Cores used by each process between two snapshots `window` apart
    /// (1.0 = one core busy the whole time); `None` where unreadable.
    pub fn cores(&self, before: &Snapshot, after: &Snapshot, window: Duration) -> Vec<Option<f64>> {
        before
            .procs
            .iter()
            .zip(&after.procs)
            .map(|(b, a)| match (b, a) {
                (Some(b), Some(a)) => {
                    Some(a.saturating_sub(*b).as_secs_f64() / window.as_secs_f64())
                }
                _ => None,
            })
            .collect()
    }
}

impl CpuWatch {
    /// Cores used between two snapshots by everything on the machine that
    /// is not watched (other work, kernel threads): what disturbed the
    /// measurement. `None` where unreadable.
    pub fn others(&self, before: &Snapshot, after: &Snapshot, window: Duration) -> Option<f64> {
        let machine = after.machine?.saturating_sub(before.machine?).as_secs_f64();
        let watched: f64 = self
            .cores(before, after, window)
            .into_iter()
            .map(|c| c.unwrap_or(0.0))
            .sum();
        Some((machine / window.as_secs_f64() - watched).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_after_the_command_name() {
        // pid (comm with spaces) state ppid pgrp session tty tpgid flags
        // minflt cminflt majflt cmajflt utime stime ...
        let line = "42 (tokio worker) S 1 42 42 0 -1 4194560 10 0 0 0 250 75 0 0 20 0";
        assert_eq!(parse_stat_ticks(line), Some(325));
    }

    #[test]
    fn machine_busy_skips_idle_and_iowait() {
        let line = "cpu  100 5 20 9000 40 1 2 3 0 0";
        assert_eq!(parse_machine_busy(line), Some(131));
        assert_eq!(parse_machine_busy("cpu0 1 2 3 4 5 6 7 8"), None);
    }

    #[test]
    fn own_process_is_readable() {
        assert!(Watched::this_process().cpu_time().is_some());
        let w = Watched::parse("discovered/redis=12").unwrap();
        assert_eq!(
            (w.system.as_deref(), w.name.as_str(), w.pid),
            (Some("discovered"), "redis", Some(12))
        );
        let w = Watched::parse("perf=7").unwrap();
        assert_eq!((w.system, w.pid), (None, Some(7)));
        assert!(Watched::parse("redis").is_err());
        assert!(Watched::parse("etcd/=3").is_err());
    }
}
