//! The facts of the machine this process runs on, for a node's registration.
//!
//! A node-side agent calls [`gather`] once and [`HostFacts::fill`] on each
//! registration request it sends: the facts fill only what the registration
//! leaves out, so values the caller sets always win.
//!
//! Each fact is read on its own and gathering never panics: a fact that
//! cannot be read stays empty (or zero, or `None`) and the others are still
//! returned. [`gather`] blocks (it reads files under `/proc` and `/sys` and
//! asks the system resolver for the canonical host name, which may query
//! DNS): from async code call it through `tokio::task::spawn_blocking`.
//!
//! ```no_run
//! use discovered::hostfacts;
//! use discovered::proto::v1::RegisterNodeRequest;
//!
//! let facts = hostfacts::gather();
//! let mut req = RegisterNodeRequest {
//!     port: 8080,
//!     ..Default::default()
//! };
//! facts.fill(&mut req);
//! assert_eq!(req.cpu_count, facts.cpu_count);
//! ```

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::panic::{self, UnwindSafe};
use std::time::{SystemTime, UNIX_EPOCH};

use sysinfo::{MemoryRefreshKind, Networks, System};

use crate::model::{MAX_ADDRESSES, MAX_METADATA_ENTRIES, WallTime};
use crate::proto::v1::RegisterNodeRequest;

/// The metadata key under which [`HostFacts::fill`] records the kernel
/// version.
pub const KERNEL_VERSION_KEY: &str = "kernel_version";

/// What a machine says about itself. Every field is empty, zero or `None`
/// when it could not be read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostFacts {
    /// The addresses of the machine's interfaces in canonical text form:
    /// IPv4 and IPv6, loopback, unspecified and link-local IPv6
    /// (`fe80::/10`) left out, deduplicated and sorted, IPv4 first, each
    /// family in numeric order; at most [`MAX_ADDRESSES`] (the first ones in
    /// that order).
    pub ip: Vec<String>,
    /// The fully qualified domain name, as `hostname --fqdn` prints it: the
    /// canonical name the system resolver gives for [`hostname`]
    /// (`getaddrinfo` with `AI_CANONNAME`), or the host name itself when it
    /// does not resolve.
    ///
    /// [`hostname`]: HostFacts::hostname
    pub fqdn: String,
    /// Operating system name and version, e.g. `Debian GNU/Linux 12`. On
    /// Linux: `NAME` and `VERSION_ID` of os-release joined by a space (just
    /// `NAME` when there is no `VERSION_ID`, as on rolling releases). On
    /// other systems: what the system calls itself, e.g. `macOS 15.1.1
    /// Sequoia` or `Windows 11 Pro`.
    pub os: String,
    /// The OS type as Python's `platform.system()` reports it: `Linux`,
    /// `Windows`, `Darwin`, `FreeBSD`, …
    pub platform_name: String,
    /// The machine architecture as `uname -m` reports it, e.g. `x86_64` or
    /// `aarch64`.
    pub arch: String,
    /// The logical CPUs this process may use, as `nproc` reports them: see
    /// [`gather`] for the source.
    pub cpu_count: u32,
    /// Total physical memory in MiB (bytes / 1048576, rounded down); on
    /// Linux `MemTotal` of `/proc/meminfo`.
    pub memory_mb: u64,
    /// When the machine booted, to the second (`nanos` is 0).
    pub last_boot: Option<WallTime>,
    /// The kernel release as `uname -r` reports it, e.g. `6.1.0-18-amd64`.
    pub kernel_version: String,
    /// The host name as `hostname` prints it (`gethostname`).
    pub hostname: String,
}

/// Reads the facts of the machine this process runs on.
///
/// Sources, per fact:
/// - `ip`: the addresses of every interface (`sysinfo`'s network list,
///   `getifaddrs` on Unix), filtered and ordered as [`HostFacts::ip`] says.
/// - `fqdn`: `getaddrinfo(hostname, AI_CANONNAME)`, as `hostname --fqdn`
///   does; the host name when that fails (and always on non-Unix systems).
/// - `os`: `/etc/os-release`, else `/usr/lib/os-release`, on Linux;
///   `sysinfo` elsewhere (and on Linux when neither file exists).
/// - `platform_name`: the target OS this crate was built for, named as
///   `platform.system()` names it.
/// - `arch`, `kernel_version`, `hostname`: `uname` and `gethostname`
///   through `sysinfo`.
/// - `cpu_count`: [`std::thread::available_parallelism`]: the CPUs in the
///   process's affinity mask (what `nproc` counts), lowered further by a
///   cgroup CPU quota if one is set (as recent coreutils' `nproc` does too;
///   coreutils 9.1 of Debian 12 ignores quotas). Unlike `nproc` it ignores
///   `OMP_NUM_THREADS` and `OMP_THREAD_LIMIT`, which describe a program's
///   settings, not the machine.
/// - `memory_mb`: `sysinfo`'s total memory (`MemTotal` on Linux).
/// - `last_boot`: `sysinfo`'s boot time (`btime` of `/proc/stat` on Linux).
///
/// Never panics: a fact that cannot be read is left empty, zero or `None`.
pub fn gather() -> HostFacts {
    let hostname = guarded(hostname);
    let fqdn = guarded(|| fqdn(&hostname));
    HostFacts {
        ip: guarded(interface_addresses),
        fqdn,
        os: guarded(os_name_and_version),
        platform_name: platform_name().to_owned(),
        arch: guarded(System::cpu_arch),
        cpu_count: guarded(cpu_count),
        memory_mb: guarded(memory_mb),
        last_boot: guarded(last_boot),
        kernel_version: guarded(|| System::kernel_version().unwrap_or_default()),
        hostname,
    }
}

impl HostFacts {
    /// Fills the fields of the registration `req` that it leaves out with
    /// these facts; values already set always win.
    ///
    /// - `ip` is set only when `req.ip` is empty.
    /// - `fqdn`, `os`, `platform_name` and `arch` only when empty.
    /// - `cpu_count` and `memory_mb` only when zero.
    /// - `last_boot` only when `None`.
    /// - The metadata key [`KERNEL_VERSION_KEY`] is added only when it is
    ///   absent, the kernel version is known, and the map has room for it
    ///   (fewer than [`MAX_METADATA_ENTRIES`] entries, so that the filled
    ///   request still validates); other metadata is kept as it is.
    ///
    /// `port`, and a fact this machine could not read, are left as they are.
    pub fn fill(&self, spec: &mut RegisterNodeRequest) {
        if spec.ip.is_empty() {
            spec.ip = self.ip.clone();
        }
        fill_text(&mut spec.fqdn, &self.fqdn);
        fill_text(&mut spec.os, &self.os);
        fill_text(&mut spec.platform_name, &self.platform_name);
        fill_text(&mut spec.arch, &self.arch);
        if spec.cpu_count == 0 {
            spec.cpu_count = self.cpu_count;
        }
        if spec.memory_mb == 0 {
            spec.memory_mb = self.memory_mb;
        }
        if spec.last_boot.is_none() {
            spec.last_boot = self.last_boot.map(Into::into);
        }
        if !self.kernel_version.is_empty()
            && !spec.metadata.contains_key(KERNEL_VERSION_KEY)
            && spec.metadata.len() < MAX_METADATA_ENTRIES
        {
            spec.metadata
                .insert(KERNEL_VERSION_KEY.to_owned(), self.kernel_version.clone());
        }
    }
}

/// Sets `field` to `fact` when `field` is empty.
fn fill_text(field: &mut String, fact: &str) {
    if field.is_empty() {
        *field = fact.to_owned();
    }
}

/// Runs one fact's reader, turning a panic inside it (ours or a
/// dependency's) into the empty value, so that one fact cannot cost the
/// others.
fn guarded<T: Default>(read: impl FnOnce() -> T + UnwindSafe) -> T {
    panic::catch_unwind(read).unwrap_or_default()
}

/// The host name, `gethostname`.
fn hostname() -> String {
    System::host_name().unwrap_or_default()
}

/// The interface addresses, filtered and ordered for [`HostFacts::ip`].
fn interface_addresses() -> Vec<String> {
    let Ok(networks) = Networks::new_with_refreshed_list() else {
        return Vec::new();
    };
    select_addresses(
        networks
            .values()
            .flat_map(|data| data.ip_networks().iter().map(|net| net.addr)),
    )
}

/// Keeps the addresses a node is reached at: no loopback, unspecified or
/// link-local IPv6 address; deduplicated, IPv4 first, each family in
/// numeric order; the first [`MAX_ADDRESSES`]; canonical text form.
fn select_addresses(addrs: impl IntoIterator<Item = IpAddr>) -> Vec<String> {
    // `IpAddr`'s order puts every IPv4 address before every IPv6 one.
    let kept: BTreeSet<IpAddr> = addrs
        .into_iter()
        .filter(|a| !a.is_loopback() && !a.is_unspecified() && !is_link_local_v6(a))
        .collect();
    kept.iter()
        .take(MAX_ADDRESSES)
        .map(ToString::to_string)
        .collect()
}

/// Whether `addr` is an IPv6 link-local unicast address (`fe80::/10`).
fn is_link_local_v6(addr: &IpAddr) -> bool {
    matches!(addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80)
}

/// The fully qualified name of `hostname`, or `hostname` itself.
fn fqdn(hostname: &str) -> String {
    if hostname.is_empty() {
        return String::new();
    }
    canonical_name(hostname).unwrap_or_else(|| hostname.to_owned())
}

/// The canonical name the system resolver gives for `host`, as
/// `hostname --fqdn` asks for it.
#[cfg(unix)]
fn canonical_name(host: &str) -> Option<String> {
    use std::ffi::{CStr, CString};

    let c_host = CString::new(host).ok()?;
    // SAFETY: `addrinfo` is plain data; all-zero is a valid value (null
    // pointers, zero flags), and the hints only need the fields set below.
    let mut hints: libc::addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_family = libc::AF_UNSPEC;
    hints.ai_socktype = libc::SOCK_DGRAM;
    hints.ai_flags = libc::AI_CANONNAME;
    let mut res: *mut libc::addrinfo = std::ptr::null_mut();
    // SAFETY: `c_host` is a NUL-terminated string that outlives the call, a
    // null service is allowed, and `hints` and `res` are valid pointers.
    let rc = unsafe { libc::getaddrinfo(c_host.as_ptr(), std::ptr::null(), &hints, &mut res) };
    if rc != 0 || res.is_null() {
        return None;
    }
    // SAFETY: on success `res` points to a list getaddrinfo allocated; with
    // AI_CANONNAME the first entry's `ai_canonname` is null or a
    // NUL-terminated string. Both stay valid until `freeaddrinfo`, which is
    // called exactly once, after the name has been copied out.
    let name = unsafe {
        let canon = (*res).ai_canonname;
        let name = (!canon.is_null()).then(|| CStr::from_ptr(canon).to_string_lossy().into_owned());
        libc::freeaddrinfo(res);
        name
    };
    name.filter(|n| !n.is_empty())
}

/// Non-Unix systems: no canonical name lookup; the host name stands.
#[cfg(not(unix))]
fn canonical_name(_host: &str) -> Option<String> {
    None
}

/// The OS name and version for [`HostFacts::os`].
fn os_name_and_version() -> String {
    #[cfg(target_os = "linux")]
    {
        let from_file = ["/etc/os-release", "/usr/lib/os-release"]
            .iter()
            .find_map(|path| std::fs::read_to_string(path).ok());
        if let Some(text) = from_file {
            return os_from_os_release(&text);
        }
        // No os-release: sysinfo falls back to /etc/lsb-release.
        match (System::name(), System::os_version()) {
            (Ok(name), Ok(version)) => format!("{name} {version}"),
            (Ok(name), Err(_)) => name,
            _ => String::new(),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        System::long_os_version().unwrap_or_default()
    }
}

/// `NAME VERSION_ID` from the text of an os-release file; `NAME` alone
/// without `VERSION_ID`; `Linux` for a missing `NAME`, as os-release(5)
/// says.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn os_from_os_release(text: &str) -> String {
    let mut name = None;
    let mut version_id = None;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('#') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match key.trim() {
            "NAME" => name = Some(unquote(value.trim())),
            "VERSION_ID" => version_id = Some(unquote(value.trim())),
            _ => {}
        }
    }
    let name = name
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "Linux".to_owned());
    match version_id.filter(|v| !v.is_empty()) {
        Some(version) => format!("{name} {version}"),
        None => name,
    }
}

/// An os-release value without its shell quoting: single quotes taken
/// literally, double quotes with `\"`, `\\`, `` \` `` and `\$` escapes.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
fn unquote(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut chars = value.chars();
    let mut quote = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '"' | '\'') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (Some('\''), c) => out.push(c),
            (_, '\\') => {
                if let Some(next) = chars.next() {
                    out.push(next);
                }
            }
            (_, c) => out.push(c),
        }
    }
    out
}

/// The OS type as Python's `platform.system()` names it.
fn platform_name() -> &'static str {
    match std::env::consts::OS {
        "linux" | "android" => "Linux",
        "macos" | "ios" => "Darwin",
        "windows" => "Windows",
        "freebsd" => "FreeBSD",
        "netbsd" => "NetBSD",
        "openbsd" => "OpenBSD",
        "dragonfly" => "DragonFly",
        "solaris" | "illumos" => "SunOS",
        other => other,
    }
}

/// The logical CPUs this process may use: see [`gather`].
fn cpu_count() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

/// Total physical memory in MiB.
fn memory_mb() -> u64 {
    let Ok(mut system) = System::new() else {
        return 0;
    };
    system.refresh_memory_specifics(MemoryRefreshKind::nothing().with_ram());
    system.total_memory() / 1_048_576
}

/// When the machine booted.
fn last_boot() -> Option<WallTime> {
    let boot = System::boot_time().ok().filter(|&s| s > 0)?;
    // Without `btime` in /proc/stat, sysinfo returns the time since boot
    // (CLOCK_BOOTTIME) instead of the boot time: recognise that value and
    // derive the boot time from it.
    let boot = match System::uptime() {
        Ok(up) if boot.abs_diff(up) <= 2 => {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
            now.checked_sub(up)?
        }
        _ => boot,
    };
    Some(WallTime {
        seconds: i64::try_from(boot).ok()?,
        nanos: 0,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use crate::model::NodeSpec;

    use super::*;

    fn facts() -> HostFacts {
        HostFacts {
            ip: vec!["192.0.2.7".into(), "2001:db8::7".into()],
            fqdn: "box.example.org".into(),
            os: "Debian GNU/Linux 12".into(),
            platform_name: "Linux".into(),
            arch: "x86_64".into(),
            cpu_count: 8,
            memory_mb: 16_000,
            last_boot: Some(WallTime {
                seconds: 1_700_000_000,
                nanos: 0,
            }),
            kernel_version: "6.1.0-18-amd64".into(),
            hostname: "box".into(),
        }
    }

    #[test]
    fn fill_sets_every_empty_field() {
        let facts = facts();
        let mut spec = RegisterNodeRequest {
            port: 9000,
            ..Default::default()
        };
        facts.fill(&mut spec);
        assert_eq!(
            spec,
            RegisterNodeRequest {
                ip: facts.ip.clone(),
                port: 9000,
                fqdn: facts.fqdn.clone(),
                os: facts.os.clone(),
                platform_name: facts.platform_name.clone(),
                arch: facts.arch.clone(),
                cpu_count: 8,
                memory_mb: 16_000,
                last_boot: facts.last_boot.map(Into::into),
                metadata: HashMap::from([(
                    KERNEL_VERSION_KEY.to_owned(),
                    "6.1.0-18-amd64".to_owned()
                )]),
                ..Default::default()
            }
        );
    }

    #[test]
    fn fill_keeps_every_explicit_value() {
        let explicit = RegisterNodeRequest {
            ip: vec!["198.51.100.1".into()],
            port: 1,
            fqdn: "given.example".into(),
            os: "Given OS 1".into(),
            platform_name: "Windows".into(),
            arch: "aarch64".into(),
            cpu_count: 2,
            memory_mb: 512,
            last_boot: Some(prost_types::Timestamp {
                seconds: 5,
                nanos: 6,
            }),
            metadata: HashMap::from([
                (KERNEL_VERSION_KEY.to_owned(), "given-kernel".to_owned()),
                ("team".to_owned(), "payments".to_owned()),
            ]),
            ..Default::default()
        };
        let mut spec = explicit.clone();
        facts().fill(&mut spec);
        assert_eq!(spec, explicit);
    }

    #[test]
    fn fill_mixes_explicit_and_filled_fields_and_keeps_metadata() {
        let mut spec = RegisterNodeRequest {
            fqdn: "given.example".into(),
            cpu_count: 3,
            metadata: HashMap::from([("team".to_owned(), "payments".to_owned())]),
            ..Default::default()
        };
        facts().fill(&mut spec);
        assert_eq!(spec.fqdn, "given.example");
        assert_eq!(spec.cpu_count, 3);
        assert_eq!(spec.ip, facts().ip);
        assert_eq!(spec.os, "Debian GNU/Linux 12");
        assert_eq!(spec.memory_mb, 16_000);
        assert_eq!(
            spec.metadata,
            HashMap::from([
                ("team".to_owned(), "payments".to_owned()),
                (KERNEL_VERSION_KEY.to_owned(), "6.1.0-18-amd64".to_owned()),
            ])
        );
    }

    #[test]
    fn fill_leaves_unknown_facts_out() {
        let mut spec = RegisterNodeRequest::default();
        HostFacts::default().fill(&mut spec);
        assert_eq!(spec, RegisterNodeRequest::default());
        assert!(!spec.metadata.contains_key(KERNEL_VERSION_KEY));
    }

    #[test]
    fn fill_adds_no_kernel_version_to_full_metadata() {
        let full: HashMap<String, String> = (0..MAX_METADATA_ENTRIES)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect();
        let mut spec = RegisterNodeRequest {
            metadata: full.clone(),
            ..Default::default()
        };
        facts().fill(&mut spec);
        assert_eq!(spec.metadata, full);
        assert!(NodeSpec::try_from(spec).is_ok());
    }

    #[test]
    fn addresses_are_filtered_deduplicated_and_sorted_ipv4_first() {
        let addrs = [
            "2001:db8::2",
            "10.0.0.2",
            "127.0.0.1",
            "::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "10.0.0.2",
            "0.0.0.0",
            "::",
            "192.0.2.1",
            "9.9.9.9",
            "2001:0db8:0000::0001",
        ]
        .map(|a| a.parse::<IpAddr>().unwrap());
        assert_eq!(
            select_addresses(addrs),
            [
                "9.9.9.9",
                "10.0.0.2",
                "192.0.2.1",
                "2001:db8::1",
                "2001:db8::2",
                "fec0::1"
            ]
        );
    }

    #[test]
    fn addresses_keep_the_first_sixteen() {
        let v6 = (1..=10).map(|i| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, i]));
        let v4 = (1..=10).map(|i| IpAddr::from([192, 0, 2, i]));
        let kept = select_addresses(v6.chain(v4));
        assert_eq!(kept.len(), MAX_ADDRESSES);
        assert_eq!(kept[0], "192.0.2.1");
        assert_eq!(kept[9], "192.0.2.10");
        assert_eq!(kept[10], "2001:db8::1");
        assert_eq!(kept[15], "2001:db8::6");
    }

    #[test]
    fn os_release_gives_name_and_version_id() {
        let debian = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n\
                      NAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\n\
                      VERSION=\"12 (bookworm)\"\nID=debian\n";
        assert_eq!(os_from_os_release(debian), "Debian GNU/Linux 12");
        let arch = "# rolling\nNAME='Arch Linux'\nID=arch\n";
        assert_eq!(os_from_os_release(arch), "Arch Linux");
        let escaped = "NAME=\"Say \\\"hi\\\"\"\nVERSION_ID=1.0\n";
        assert_eq!(os_from_os_release(escaped), "Say \"hi\" 1.0");
        assert_eq!(os_from_os_release(""), "Linux");
    }

    #[test]
    fn gather_reads_this_machine() {
        let facts = gather();
        assert!(!facts.hostname.is_empty());
        assert!(!facts.fqdn.is_empty());
        assert!(facts.cpu_count > 0);
        assert!(facts.memory_mb > 0);
        assert!(facts.ip.len() <= MAX_ADDRESSES);
        let mut spec = RegisterNodeRequest::default();
        facts.fill(&mut spec);
        let spec = NodeSpec::try_from(spec.clone()).map_err(|e| format!("{e}: {spec:?}"));
        assert!(spec.is_ok(), "{spec:?}");
    }
}
