//! The real binary at its open-file limit (issue 11): under
//! `prlimit --nofile=64:64` and with more clients than that, the accept
//! loop backs off and says so instead of spinning a core, and serves again
//! once clients leave.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::common::*;

/// util-linux's `prlimit`, which runs a command under a resource limit.
const PRLIMIT: &str = "/usr/bin/prlimit";

/// The limit the server runs under: small, so a test reaches it quickly.
const NOFILE: u32 = 64;

/// Connections the test holds open: more than [`NOFILE`] allows.
const HELD: usize = 100;

/// Runs `discovered serve` on `port` under the open-file limit, with a
/// thread that copies its stderr into the returned buffer as it comes.
fn spawn_limited(port: u16) -> (Proc, Arc<Mutex<String>>) {
    assert!(
        Path::new(PRLIMIT).exists(),
        "{PRLIMIT} is missing: apt-get install util-linux"
    );
    let mut cmd = Command::new(PRLIMIT);
    scrub_env(&mut cmd)
        .arg(format!("--nofile={NOFILE}:{NOFILE}"))
        .arg(BIN)
        .args(argv(&format!("serve --listen 127.0.0.1:{port}")))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // prlimit execs the command, so the child's pid is the server's.
    let mut proc = Proc {
        child: cmd.spawn().expect("spawn prlimit"),
    };
    let stderr = proc.child.stderr.take().expect("stderr piped");
    let log = Arc::new(Mutex::new(String::new()));
    let sink = Arc::clone(&log);
    // Ends when the server's stderr closes, that is when it is killed.
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap();
            log.push_str(&line);
            log.push('\n');
        }
    });
    (proc, log)
}

/// CPU time (user + system) the process `pid` has used, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc/pid/stat");
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / clock_ticks()
}

/// Clock ticks per second, the unit of /proc/<pid>/stat's times.
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Waits until `log` has a line containing `text`.
async fn wait_log(log: &Mutex<String>, text: &str) {
    eventually(&format!("a log line with {text:?}"), || async {
        log.lock().unwrap().contains(text).then_some(())
    })
    .await;
}

#[tokio::test]
async fn at_the_open_file_limit_the_server_backs_off_warns_and_recovers() {
    let port = free_port();
    let (mut proc, log) = spawn_limited(port);
    let pid = proc.child.id();
    let deadline = std::time::Instant::now() + WAIT;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(proc.child.try_wait().unwrap().is_none(), "server exited");
        assert!(
            std::time::Instant::now() < deadline,
            "server did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The kernel completes these handshakes into the listen backlog
    // whether or not the server can accept them.
    let held: Vec<TcpStream> = (0..HELD)
        .map(|i| {
            TcpStream::connect(("127.0.0.1", port)).unwrap_or_else(|e| panic!("connect {i}: {e}"))
        })
        .collect();
    wait_log(&log, "accepting connections failed").await;

    let before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let used = cpu_seconds(pid) - before;
    eprintln!("CPU at the open-file limit: {used:.2} s in 2 s");
    assert!(
        used < 0.5,
        "the accept loop spins: {used:.2} s of CPU in 2 s"
    );
    assert!(
        log.lock()
            .unwrap()
            .contains(&format!("open-file limit is {NOFILE}")),
        "no start-up warning about the low limit: {}",
        log.lock().unwrap()
    );

    drop(held);
    let mut client = eventually("a gRPC call after the clients left", || async {
        let mut c = Client::connect(format!("http://127.0.0.1:{port}"))
            .await
            .ok()?;
        try_list_groups(&mut c, 10, "").await.ok().map(|_| c)
    })
    .await;
    try_list_groups(&mut client, 10, "")
        .await
        .expect("ListServiceGroups");
}
