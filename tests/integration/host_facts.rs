//! Checks each fact `hostfacts::gather` reads against what the machine
//! itself says: /proc, /etc/os-release and the usual commands (`nproc`,
//! `uname`, `hostname`, `ip`). A test that cannot read the machine's own
//! answer fails saying so; none is skipped.

use std::collections::BTreeSet;
use std::io::ErrorKind;
use std::net::IpAddr;
use std::process::Command;

use discovered::hostfacts::{self, HostFacts, KERNEL_VERSION_KEY};
use discovered::model::{MAX_ADDRESSES, NodeSpec};
use discovered::proto::v1::RegisterNodeRequest;

/// Runs a command and returns its trimmed standard output, failing the test
/// when it cannot be run or exits with an error.
fn run(program: &str, args: &[&str]) -> String {
    output(&mut Command::new(program), program, args)
        .unwrap_or_else(|e| panic!("cannot read the machine's answer: {e}"))
}

/// Runs `cmd` (shown as `program args`): its trimmed standard output, or
/// why it exited with an error. Fails the test when it cannot be run.
fn output(cmd: &mut Command, program: &str, args: &[&str]) -> Result<String, String> {
    let shown = format!(
        "`{}`",
        [program]
            .iter()
            .chain(args)
            .copied()
            .collect::<Vec<_>>()
            .join(" ")
    );
    let out = cmd.args(args).output().unwrap_or_else(|e| {
        panic!("cannot read the machine's answer: {shown} could not be run: {e}")
    });
    if !out.status.success() {
        return Err(format!(
            "{shown} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8(out.stdout)
        .unwrap_or_else(|e| panic!("{shown} printed non-UTF-8 output: {e}"));
    Ok(text.trim().to_owned())
}

/// Reads a file, failing the test when it cannot.
fn read(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read the machine's answer from {path}: {e}"))
}

fn facts() -> HostFacts {
    hostfacts::gather()
}

#[test]
fn memory_mb_is_memtotal_of_proc_meminfo() {
    let meminfo = read("/proc/meminfo");
    let line = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .unwrap_or_else(|| panic!("no MemTotal line in /proc/meminfo:\n{meminfo}"));
    let kib: u64 = line
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("cannot parse {line:?} of /proc/meminfo"));
    assert_eq!(
        facts().memory_mb,
        kib * 1024 / 1_048_576,
        "MemTotal: {kib} kB"
    );
}

#[test]
fn cpu_count_is_what_nproc_prints() {
    // nproc also obeys OpenMP's variables, which hostfacts ignores on
    // purpose (they are a program's settings, not the machine's).
    let mut cmd = Command::new("nproc");
    cmd.env_remove("OMP_NUM_THREADS")
        .env_remove("OMP_THREAD_LIMIT");
    let nproc = output(&mut cmd, "nproc", &[])
        .unwrap_or_else(|e| panic!("cannot read the machine's answer: {e}"));
    let expected: u32 = nproc
        .parse()
        .unwrap_or_else(|e| panic!("nproc printed {nproc:?}: {e}"));
    assert_eq!(
        facts().cpu_count,
        expected,
        "cpu_count differs from `nproc` (a cgroup CPU quota lowers cpu_count, but older nproc ignores it)"
    );
}

#[test]
fn arch_is_uname_m() {
    assert_eq!(facts().arch, run("uname", &["-m"]));
}

#[test]
fn kernel_version_is_uname_r() {
    assert_eq!(facts().kernel_version, run("uname", &["-r"]));
}

/// The unquoted value of `key` in os-release text.
fn os_release_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix(key)?.strip_prefix('=')?;
        Some(value.trim().trim_matches(['"', '\'']).to_owned())
    })
}

#[test]
fn os_is_name_and_version_id_of_os_release() {
    let text = std::fs::read_to_string("/etc/os-release")
        .or_else(|_| std::fs::read_to_string("/usr/lib/os-release"))
        .unwrap_or_else(|e| {
            panic!(
                "cannot read the machine's answer from /etc/os-release or /usr/lib/os-release: {e}"
            )
        });
    let name =
        os_release_value(&text, "NAME").unwrap_or_else(|| panic!("no NAME in os-release:\n{text}"));
    let expected = match os_release_value(&text, "VERSION_ID") {
        Some(version) => format!("{name} {version}"),
        None => name,
    };
    assert_eq!(facts().os, expected);
}

#[test]
fn platform_name_is_linux() {
    assert_eq!(facts().platform_name, "Linux");
}

#[test]
fn hostname_is_what_hostname_prints() {
    assert_eq!(facts().hostname, run("hostname", &[]));
}

#[test]
fn fqdn_is_what_hostname_fqdn_prints() {
    let facts = facts();
    match output(&mut Command::new("hostname"), "hostname", &["--fqdn"]) {
        Ok(fqdn) => assert_eq!(facts.fqdn, fqdn),
        // The name does not resolve: the host name stands.
        Err(why) => assert_eq!(facts.fqdn, run("hostname", &[]), "{why}"),
    }
}

/// Whether an address belongs in `HostFacts::ip`.
fn kept(addr: &IpAddr) -> bool {
    let link_local_v6 = matches!(addr, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
    !addr.is_loopback() && !addr.is_unspecified() && !link_local_v6
}

fn parse_addr(text: &str, source: &str) -> IpAddr {
    text.parse()
        .unwrap_or_else(|e| panic!("{source} listed {text:?}, not an address: {e}"))
}

/// Every interface address the machine lists: from `ip -o addr`, or where
/// `ip` is not installed, IPv6 from /proc/net/if_inet6 and IPv4 from
/// `hostname -I`.
fn machine_addresses() -> Vec<IpAddr> {
    match Command::new("ip").args(["-o", "addr", "show"]).output() {
        Err(e) if e.kind() == ErrorKind::NotFound => addresses_without_ip_command(),
        _ => {
            let listing = run("ip", &["-o", "addr", "show"]);
            // "2: eth0    inet 192.0.2.2/24 brd ... scope global eth0\ ..."
            listing
                .lines()
                .filter_map(|line| {
                    let mut words = line.split_whitespace().skip(2);
                    match words.next()? {
                        "inet" | "inet6" => {
                            let addr = words.next()?;
                            let addr = addr.split('/').next().unwrap_or(addr);
                            Some(parse_addr(addr, "`ip -o addr`"))
                        }
                        _ => None,
                    }
                })
                .collect()
        }
    }
}

fn addresses_without_ip_command() -> Vec<IpAddr> {
    let mut addrs: Vec<IpAddr> = read("/proc/net/if_inet6")
        .lines()
        .filter_map(|line| {
            let hex = line.split_whitespace().next()?;
            let bits = u128::from_str_radix(hex, 16)
                .unwrap_or_else(|e| panic!("/proc/net/if_inet6 listed {hex:?}: {e}"));
            Some(IpAddr::from(bits.to_be_bytes()))
        })
        .collect();
    addrs.extend(
        run("hostname", &["-I"])
            .split_whitespace()
            .map(|a| parse_addr(a, "`hostname -I`"))
            .filter(IpAddr::is_ipv4),
    );
    addrs
}

#[test]
fn ip_is_every_interface_address_but_loopback_and_link_local() {
    let machine = machine_addresses();
    assert!(
        !machine.is_empty(),
        "the machine lists no interface address at all"
    );
    let expected: Vec<String> = machine
        .iter()
        .filter(|a| kept(a))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .take(MAX_ADDRESSES)
        .map(ToString::to_string)
        .collect();
    assert_eq!(facts().ip, expected, "machine lists {machine:?}");
}

#[test]
fn last_boot_is_btime_of_proc_stat() {
    let stat = read("/proc/stat");
    let btime: i64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no readable btime line in /proc/stat"));
    let boot = facts().last_boot.expect("last_boot was not read");
    assert_eq!(boot.nanos, 0);
    assert!(
        (boot.seconds - btime).abs() <= 2,
        "last_boot {} vs btime {btime}",
        boot.seconds
    );
}

#[test]
fn filling_an_empty_spec_gives_a_valid_node_with_every_fact() {
    let facts = facts();
    let mut spec = RegisterNodeRequest::default();
    facts.fill(&mut spec);
    assert_eq!(spec.ip, facts.ip);
    assert_eq!(spec.fqdn, facts.fqdn);
    assert_eq!(spec.os, facts.os);
    assert_eq!(spec.cpu_count, facts.cpu_count);
    assert_eq!(spec.memory_mb, facts.memory_mb);
    assert_eq!(spec.last_boot, facts.last_boot.map(Into::into));
    assert_eq!(
        spec.metadata.get(KERNEL_VERSION_KEY),
        Some(&facts.kernel_version)
    );
    let ips_before = spec.ip.clone();
    let spec =
        NodeSpec::try_from(spec).unwrap_or_else(|e| panic!("filled spec does not validate: {e}"));
    assert_eq!(spec.ip, ips_before, "gathered addresses are not canonical");
}
