//! The real `discovered` binary as a subprocess, the way operators run it.

use std::time::Instant;

use crate::common::*;
use discovered::proto::v1::*;

/// A client of the server on `port`, once it listens.
async fn wait_listening(port: u16) -> Client {
    eventually(&format!("the server to listen on {port}"), || async move {
        Client::connect(format!("http://127.0.0.1:{port}"))
            .await
            .ok()
    })
    .await
}

/// Waits until `proc` listens on `port`, failing if it exits first.
fn wait_port(proc: &mut Proc, port: u16, exited: &str) {
    let deadline = Instant::now() + WAIT;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(proc.child.try_wait().unwrap().is_none(), "{exited}");
        assert!(Instant::now() < deadline, "server did not listen");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

async fn register_and_read(client: &mut Client) {
    let req = RegisterNodeRequest {
        service_name: "payments".into(),
        node_name: "pay-1".into(),
        port: 8080,
        ..Default::default()
    };
    register_node(client, req).await;
    let nodes = get_nodes(client, "", "payments").await;
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0].ip, vec!["127.0.0.1"]);
}

#[tokio::test]
async fn serves_in_memory_and_exits_zero_on_sigterm() {
    let port = free_port();
    let proc = Proc::spawn(&format!("serve --listen 127.0.0.1:{port}"), &[]);
    let mut client = wait_listening(port).await;
    register_and_read(&mut client).await;
    proc.signal("TERM");
    let (status, stderr) = proc.wait_async().await;
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(
        stderr.contains("in-memory store"),
        "no in-memory notice: {stderr}"
    );
}

#[tokio::test]
async fn serves_on_redis_from_environment_and_exits_zero_on_sigint() {
    let redis = RedisServer::start();
    let port = free_port();
    let proc = Proc::spawn(
        &format!("serve --listen 127.0.0.1:{port} --log-format json"),
        &[("DISCOVERED_REDIS_URL", &redis.url())],
    );
    let mut client = wait_listening(port).await;
    register_and_read(&mut client).await;
    // The node is in Redis, not in the process.
    let mut conn = redis.connection().await;
    let fields: Vec<String> =
        redis::AsyncCommands::hkeys(&mut conn, "discovered:v2:{default/payments}:nodes")
            .await
            .unwrap();
    assert_eq!(fields, vec!["pay-1"]);
    proc.signal("INT");
    let (status, stderr) = proc.wait_async().await;
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    for line in stderr.lines() {
        serde_json::from_str::<serde_json::Value>(line)
            .unwrap_or_else(|e| panic!("log line is not JSON ({e}): {line}"));
    }
}

#[test]
fn unreachable_redis_is_one_clear_line_and_a_failure_code() {
    let closed = free_port();
    let proc = Proc::spawn(
        &format!(
            "serve --listen 127.0.0.1:{} --redis-host 127.0.0.1 --redis-port {closed}",
            free_port()
        ),
        &[],
    );
    let (status, stderr) = proc.wait();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "want one error line, got: {stderr}");
    assert!(
        errors[0].starts_with("error: cannot reach Redis at 127.0.0.1:"),
        "{stderr}"
    );
    assert!(
        errors[0].contains(&format!("127.0.0.1:{closed}")),
        "{stderr}"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "{stderr}"
    );
}

#[test]
fn wrong_redis_password_is_reported_as_such() {
    let redis = RedisServer::start_with(&["--requirepass", "right-password"]);
    let url = format!("redis://:wrong-password@127.0.0.1:{}/", redis.port);
    let proc = Proc::spawn(
        &format!("serve --listen 127.0.0.1:{} --redis-url {url}", free_port()),
        &[],
    );
    let (status, stderr) = proc.wait();
    assert_eq!(status.code(), Some(1), "stderr: {stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_default();
    assert!(line.contains("refused the credentials"), "{stderr}");
    assert!(
        line.contains(&format!("127.0.0.1:{}", redis.port)),
        "{stderr}"
    );
    assert!(
        !line.contains("wrong-password"),
        "the password leaked into the message: {line}"
    );

    // The right password (through the original's parameters) works.
    let port = free_port();
    let mut ok = Proc::spawn(
        &format!(
            "serve --listen 127.0.0.1:{port} --redis-host 127.0.0.1 --redis-port {}",
            redis.port
        ),
        &[("DISCOVERED_REDIS_PASSWORD", "right-password")],
    );
    wait_port(&mut ok, port, "server exited with the right password");
}

#[test]
fn bad_flags_exit_with_code_two() {
    for args in [
        "serve --listen not-an-address",
        "serve --redis-url redis://x --redis-host y",
        "serve --no-such-flag",
    ] {
        let (status, stderr) = Proc::spawn(args, &[]).wait();
        assert_eq!(status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("error"), "{args:?}: {stderr}");
    }
    // A bad default group is refused at start, naming the flag.
    let (status, stderr) = Proc::spawn(
        &format!(
            "serve --listen 127.0.0.1:{} --service-group a:b",
            free_port()
        ),
        &[],
    )
    .wait();
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("--service-group"), "{stderr}");
}

#[test]
fn a_bad_key_prefix_is_one_error_line_naming_the_flag() {
    // A glob widens the keyspace-notification pattern, a brace breaks the
    // hash tags, a newline breaks the protocol: all refused at start.
    let bad = [
        ("--key-prefix '*'", None),
        ("--key-prefix a{b}", None),
        ("--key-prefix a:b", None),
        ("--key-prefix ''", None),
        ("", Some("line\nbreak")),
    ];
    for (flag, env) in bad {
        let line = format!("serve --listen 127.0.0.1:{} {flag}", free_port());
        let envs: Vec<(&str, &str)> = env
            .map(|v| ("DISCOVERED_KEY_PREFIX", v))
            .into_iter()
            .collect();
        let (status, stderr) = Proc::spawn(&line, &envs).wait();
        assert_eq!(status.code(), Some(1), "{flag:?} {env:?}: {stderr}");
        let errors: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("error: "))
            .collect();
        assert_eq!(errors.len(), 1, "{flag:?} {env:?}: {stderr}");
        assert!(errors[0].contains("--key-prefix"), "{stderr}");
    }
    // A good one starts the server.
    let port = free_port();
    let mut proc = Proc::spawn(
        &format!("serve --listen 127.0.0.1:{port} --key-prefix team-a.v2_x"),
        &[],
    );
    wait_port(&mut proc, port, "server exited with a good --key-prefix");
}

#[tokio::test]
async fn a_stuck_client_cannot_hold_shutdown_past_the_drain_time() {
    let port = free_port();
    let proc = Proc::spawn(
        &format!("serve --listen 127.0.0.1:{port} --drain-timeout 1"),
        &[],
    );
    let mut client = wait_listening(port).await;
    register_and_read(&mut client).await;
    proc.signal("TERM");
    // Blocking this runtime freezes the client: it never answers the
    // server's goodbye, so only the drain time can end the server.
    let (status, stderr) = proc.wait();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(stderr.contains("stopping anyway"), "{stderr}");
    drop(client);
}

#[tokio::test]
async fn sigterm_ends_open_watch_streams_with_unavailable() {
    let redis = RedisServer::start();
    let port = free_port();
    let proc = Proc::spawn(
        &format!(
            "serve --listen 127.0.0.1:{port} --redis-url {}",
            redis.url()
        ),
        &[],
    );
    let mut client = wait_listening(port).await;
    let mut w = Watch::open(&mut client, "", "payments", None).await;
    assert!(w.initial("default", "payments").await.is_empty());
    proc.signal("TERM");
    let status = w.end().await;
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    let (status, stderr) = proc.wait_async().await;
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    assert!(
        !stderr.contains("stopping anyway"),
        "the drain timed out: {stderr}"
    );
}

#[test]
fn redis_that_refuses_config_needs_no_config_set() {
    // Like a managed Redis: CONFIG is not available.
    let redis = RedisServer::start_with(&["--rename-command", "CONFIG", ""]);
    let serve = |port: u16| {
        format!(
            "serve --listen 127.0.0.1:{port} --redis-url {}",
            redis.url()
        )
    };
    let (status, stderr) = Proc::spawn(&serve(free_port()), &[]).wait();
    assert_eq!(status.code(), Some(1), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("notify-keyspace-events"), "{stderr}");
    assert!(
        errors[0].contains("Kxe") && errors[0].contains("--no-config-set"),
        "{stderr}"
    );

    // With the operator's word that it is configured, the server starts.
    let port = free_port();
    let mut proc = Proc::spawn(&format!("{} --no-config-set", serve(port)), &[]);
    wait_port(&mut proc, port, "server exited with --no-config-set");
}

/// Runs `serve` with `flags` on 0.0.0.0 at a port this test holds on
/// 127.0.0.1: the server either refuses to serve unprotected, or gets past
/// that check and fails to bind (the port is taken), so it never listens
/// on an address other machines could reach.
fn serve_on_every_address(flags: &str, envs: &[(&str, &str)]) -> (Option<i32>, String) {
    let held = std::net::TcpListener::bind("127.0.0.1:0").expect("hold a port");
    let port = held.local_addr().expect("port").port();
    let (status, stderr) =
        Proc::spawn(&format!("serve --listen 0.0.0.0:{port} {flags}"), envs).wait();
    (status.code(), stderr)
}

#[test]
fn an_unprotected_server_listens_only_on_loopback_unless_insecure() {
    // Neither TLS nor an auth file: refused, saying how to go on.
    let (code, stderr) = serve_on_every_address("", &[]);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    for part in [
        "refusing to serve 0.0.0.0:",
        "--insecure",
        "--auth-file",
        "--tls-cert",
    ] {
        assert!(stderr.contains(part), "{part:?} missing: {stderr}");
    }
    // --insecure (or its variable), or an auth file: past the check, to
    // the bind that the held port makes fail.
    let dir = std::env::temp_dir().join(format!("discovered-open-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let auth = dir.join("auth.toml");
    std::fs::write(
        &auth,
        format!(
            "[[token]]\nname = \"ops\"\nsha256 = \"{}\"\nrole = \"admin\"\n",
            discovered::auth::hash_token("t")
        ),
    )
    .expect("auth file");
    let cases = [
        ("--insecure".to_string(), vec![]),
        (String::new(), vec![("DISCOVERED_INSECURE", "true")]),
        (format!("--auth-file {}", auth.display()), vec![]),
    ];
    for (flags, envs) in &cases {
        let (code, stderr) = serve_on_every_address(flags, envs);
        assert_eq!(code, Some(1), "{flags} {envs:?}: {stderr}");
        assert!(
            stderr.contains("cannot listen on 0.0.0.0:"),
            "{flags} {envs:?} should pass the check: {stderr}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_signal_during_the_start_does_not_kill_the_server() {
    use std::os::unix::process::ExitStatusExt;

    // A "Redis" that accepts and never answers: the start's Redis check
    // takes its full timeout, and the SIGTERM lands in the middle of it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let proc = Proc::spawn(
        &format!("serve --listen 127.0.0.1:0 --redis-url redis://127.0.0.1:{port}"),
        &[],
    );
    let _accepted = silent.accept().expect("the server connects to Redis");
    proc.signal("TERM");
    let (status, stderr) = proc.wait();
    // Not ended by the signal's default action: the start goes on to its
    // own end (here the failed Redis check, one line and exit code 1).
    assert_eq!(status.signal(), None, "killed by the signal: {stderr}");
    assert_eq!(status.code(), Some(1), "{stderr}");
}
