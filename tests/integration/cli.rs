//! The client commands of the real `discovered` binary against an
//! in-process server: output in table and JSON form, and exit codes.

use std::process::Stdio;

use crate::common::{BIN, Backend, TestServer, argv, free_port, scrub_env, within};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::ChildStdout;

struct Out {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// A server on Redis for the commands to talk to, and its address.
async fn server() -> (TestServer, String) {
    let t = TestServer::start(Backend::Redis).await;
    let url = t.server.url();
    (t, url)
}

/// `discovered ARGS --server SERVER`, ARGS written as one string (see
/// [`argv`]).
fn command(server: &str, args: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(BIN);
    scrub_env(cmd.as_std_mut())
        .args(argv(args))
        .args(["--server", server])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.kill_on_drop(true);
    cmd
}

/// Runs `discovered ARGS --server SERVER` to completion.
async fn run(server: &str, args: &str) -> Out {
    let out = within(
        &format!("discovered {args}"),
        command(server, args).output(),
    )
    .await
    .expect("run discovered");
    Out {
        code: out.status.code(),
        stdout: String::from_utf8(out.stdout).expect("utf-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("utf-8 stderr"),
    }
}

/// Runs a command that must succeed; returns its stdout.
async fn ok(server: &str, args: &str) -> String {
    let out = run(server, args).await;
    assert_eq!(
        out.code,
        Some(0),
        "discovered {args:?} failed: {}",
        out.stderr
    );
    out.stdout
}

/// Runs a command with `--output json`; returns its stdout as JSON.
async fn ok_json(server: &str, args: &str) -> Value {
    let stdout = ok(server, &format!("{args} --output json")).await;
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"))
}

/// Runs a command that must fail with `code`; returns its stderr.
async fn fails(server: &str, args: &str, code: i32) -> String {
    let out = run(server, args).await;
    assert_eq!(
        out.code,
        Some(code),
        "discovered {args:?}: stdout {} stderr {}",
        out.stdout,
        out.stderr
    );
    assert_eq!(
        out.stderr.trim_end().lines().count(),
        1,
        "not one line: {}",
        out.stderr
    );
    out.stderr
}

/// The next line a running `discovered watch` prints.
async fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> String {
    within("the next watch event", lines.next_line())
        .await
        .expect("read watch output")
        .expect("watch ended early")
}

/// The next line of a `discovered watch --output json`, as JSON.
async fn next_json(lines: &mut Lines<BufReader<ChildStdout>>) -> Value {
    let line = next_line(lines).await;
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"))
}

fn is_rfc3339(v: &Value) -> bool {
    v.as_str()
        .is_some_and(|s| s.len() == 24 && s.ends_with('Z') && s.as_bytes()[10] == b'T')
}

/// The lines of `text`.
fn lines_of(text: &str) -> Vec<&str> {
    text.lines().collect()
}

/// Asserts that `text` contains each of `parts`.
#[track_caller]
fn assert_contains(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "{part:?} missing from: {text}");
    }
}

/// Asserts that `v` has each field of `want`, with its value; an object
/// in `want` is checked field by field in turn (`v` may hold more).
#[track_caller]
fn assert_fields(v: &Value, want: Value) {
    fn check(v: &Value, want: &Value, path: &str, all: &Value) {
        match want.as_object() {
            Some(fields) => {
                for (k, w) in fields {
                    check(&v[k], w, &format!("{path}.{k}"), all);
                }
            }
            None => assert_eq!(v, want, "{path} of {all}"),
        }
    }
    check(v, &want, "", v);
}

/// The `node_name`s of a JSON list of nodes.
fn node_names(v: &Value) -> Vec<&str> {
    let nodes = v.as_array().expect("array");
    nodes
        .iter()
        .map(|n| n["node_name"].as_str().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_in_table_and_json() {
    let (_t, s) = server().await;

    let table = ok(
        &s,
        "register-service payments --endpoint https://pay.example:8443 --endpoint-type http \
         --auth-type basic --auth-credentials user:secret --backend postgres \
         --description 'Takes money' --meta team=billing --meta tier=1",
    )
    .await;
    assert!(table.starts_with("FIELD"), "{table}");
    assert_contains(&table, &["https://pay.example:8443", "team=billing,tier=1"]);
    assert!(!table.contains("user:secret"), "credentials shown: {table}");

    let v = ok_json(
        &s,
        "register-service orders --group shop --endpoint orders:9000",
    )
    .await;
    assert_fields(
        &v,
        json!({"service_group": "shop", "service_name": "orders", "endpoint": "orders:9000"}),
    );
    assert!(is_rfc3339(&v["registered_at"]), "{v}");

    // get-service hides credentials unless asked.
    let v = ok_json(&s, "get-service payments").await;
    assert_fields(
        &v,
        json!({
            "service_group": "default", "endpoint_type": "http", "auth_type": "basic",
            "auth_credentials": "", "backend": "postgres", "description": "Takes money",
            "metadata": {"team": "billing", "tier": "1"},
        }),
    );
    assert!(is_rfc3339(&v["updated_at"]), "{v}");
    let v = ok_json(&s, "get-service payments --reveal-credentials").await;
    assert_eq!(v["auth_credentials"], "user:secret");
    let table = ok(&s, "get-service payments --reveal-credentials").await;
    assert_contains(&table, &["user:secret", "Takes money"]);
    let table = ok(&s, "get-service orders --group shop").await;
    assert_contains(&table, &["orders:9000"]);

    // Services are listed from their first node on.
    ok(&s, "register-node payments pay-1 --ip 10.0.0.1").await;
    ok(&s, "register-node ledger led-1 --ip 10.0.0.2").await;
    ok(&s, "register-node orders ord-1 --group shop --ip 10.0.0.3").await;
    let table = ok(&s, "services").await;
    let lines = lines_of(&table);
    assert_eq!(lines, ["SERVICE", "ledger", "payments"], "{table}");
    let v = ok_json(&s, "services --group shop").await;
    assert_eq!(v, json!(["orders"]));

    let table = ok(&s, "groups").await;
    assert_eq!(lines_of(&table), ["GROUP", "default", "shop"], "{table}");
    assert_eq!(ok_json(&s, "groups").await, json!(["default", "shop"]));

    // remove-service, with and without --allow-missing.
    let table = ok(&s, "remove-service ledger").await;
    assert_contains(&table, &["removed service ledger with 1 node(s)"]);
    let v = ok_json(&s, "remove-service payments").await;
    assert_eq!(v, json!({"removed": true, "nodes_removed": 1}));
    fails(&s, "remove-service payments", 3).await;
    let v = ok_json(&s, "remove-service payments --allow-missing").await;
    assert_eq!(v["removed"], false);
    let table = ok(&s, "remove-service payments --allow-missing").await;
    assert_contains(&table, &["did not exist"]);

    // remove-group: GROUP is positional and required.
    fails(&s, "remove-group", 2).await;
    let table = ok(&s, "remove-group shop").await;
    assert_contains(&table, &["removed group shop with 1 service(s)"]);
    fails(&s, "remove-group shop", 3).await;
    let v = ok_json(&s, "remove-group shop --allow-missing").await;
    assert_eq!(v, json!({"removed": false, "services_removed": 0}));
    ok(&s, "register-node orders ord-1 --group shop").await;
    let v = ok_json(&s, "remove-group shop").await;
    assert_eq!(v, json!({"removed": true, "services_removed": 1}));
    let table = ok(&s, "services --group shop").await;
    assert_eq!(table.trim_end(), "SERVICE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_in_table_and_json() {
    let (_t, s) = server().await;

    let table = ok(
        &s,
        "register-node payments pay-1 --ip 10.0.0.1 --ip fd00::1 --port 8443 --ttl 60 \
         --instance-id inst-a --meta zone=a",
    )
    .await;
    let lines = lines_of(&table);
    assert_eq!(lines.len(), 2, "{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(header, ["NAME", "ADDRESSES", "PORT", "EXPIRES", "INSTANCE"]);
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(row[..3], ["pay-1", "10.0.0.1,fd00::1", "8443"]);
    assert!(row[3].ends_with('Z'), "{table}");
    assert_eq!(row[4], "inst-a");
    // Columns are aligned: every column starts at the header's offset.
    assert_eq!(lines[0].find("PORT"), lines[1].find("8443"), "{table}");

    let v = ok_json(
        &s,
        "register-node payments pay-2 --ip 10.0.0.2 --port 9000 --ttl 0",
    )
    .await;
    assert_fields(
        &v,
        json!({"node_name": "pay-2", "ip": ["10.0.0.2"], "port": 9000, "expires_at": null}),
    );
    let generated = v["instance_id"].as_str().expect("instance id").to_string();
    assert!(!generated.is_empty());

    // Without --ip the server records the caller's address.
    ok(&s, "register-node payments pay-3 --port 1").await;

    let v = ok_json(&s, "nodes payments").await;
    assert_eq!(node_names(&v), ["pay-1", "pay-2", "pay-3"]);
    assert_fields(
        &v[0],
        json!({
            "ip": ["10.0.0.1", "fd00::1"], "port": 8443, "metadata": {"zone": "a"},
            "instance_id": "inst-a", "service_group": "default",
        }),
    );
    assert!(is_rfc3339(&v[0]["expires_at"]), "{v}");
    assert!(is_rfc3339(&v[0]["registered_at"]), "{v}");
    assert_eq!(v[2]["ip"], json!(["127.0.0.1"]));

    let table = ok(&s, "nodes payments").await;
    let lines = lines_of(&table);
    assert_eq!(lines.len(), 4, "{table}");
    assert!(lines[0].starts_with("NAME"), "{table}");
    assert_contains(lines[2], &["pay-2", "never", &generated]);
    assert_contains(lines[3], &["127.0.0.1"]);
    let table = ok(&s, "nodes nobody").await;
    assert_eq!(table.split_whitespace().next(), Some("NAME"));
    assert_eq!(table.lines().count(), 1, "{table}");

    // heartbeat
    let v = ok_json(&s, "heartbeat payments pay-2 --ttl 120").await;
    assert_eq!(v["node_name"], "pay-2");
    assert!(is_rfc3339(&v["expires_at"]), "{v}");
    let table = ok(&s, "heartbeat payments pay-1 --instance-id inst-a --ttl 0").await;
    assert_contains(&table, &["pay-1", "never"]);
    fails(&s, "heartbeat payments pay-1 --instance-id inst-b", 6).await;
    fails(&s, "heartbeat payments gone", 3).await;

    // remove-node
    let err = fails(&s, "remove-node payments pay-1 --instance-id inst-b", 6).await;
    assert!(err.starts_with("error: FAILED_PRECONDITION: "), "{err}");
    let table = ok(&s, "remove-node payments pay-1 --instance-id inst-a").await;
    assert_contains(&table, &["removed node pay-1"]);
    let v = ok_json(&s, "remove-node payments pay-2").await;
    assert_eq!(v, json!({"removed": true}));
    fails(&s, "remove-node payments pay-2", 3).await;
    let v = ok_json(&s, "remove-node payments pay-2 --allow-missing").await;
    assert_eq!(v, json!({"removed": false}));
    assert_eq!(node_names(&ok_json(&s, "nodes payments").await), ["pay-3"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_one_line_with_distinct_exit_codes() {
    let (_t, s) = server().await;

    let err = fails(&s, "get-service missing", 3).await;
    assert!(err.starts_with("error: NOT_FOUND: "), "{err}");
    let err = fails(&s, "get-service missing --output json", 3).await;
    assert!(err.starts_with("error: NOT_FOUND: "), "{err}");

    let err = fails(&s, "get-service a:b", 4).await;
    assert!(err.starts_with("error: INVALID_ARGUMENT: "), "{err}");
    fails(&s, "register-node a:b n1 --ip 10.0.0.1", 4).await;
    fails(&s, "register-node svc n1 --ip not-an-ip", 4).await;
    fails(&s, "nodes svc --group a:b", 4).await;

    // A server that is down: a free port nobody listens on.
    let down = format!("127.0.0.1:{}", free_port());
    let err = fails(&down, "services", 5).await;
    assert!(err.starts_with("error: UNAVAILABLE: "), "{err}");
    fails(&down, "watch --output json", 5).await;

    // Usage errors stay 2.
    fails(&s, "register-node svc", 2).await;
    fails(&s, "register-node svc n --port 70000", 2).await;
    fails(&s, "nodes svc --output yaml", 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_prints_state_then_changes() {
    let (_t, s) = server().await;
    ok(&s, "register-node payments pay-1 --ip 10.0.0.1 --port 8080").await;

    let mut child = command(&s, "watch payments --output json")
        .spawn()
        .expect("spawn watch");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();

    let initial = next_json(&mut lines).await;
    assert_eq!(initial["type"], "INITIAL", "{initial}");
    assert_eq!(initial["group"], "default");
    assert_eq!(initial["service"], "payments");
    assert_eq!(initial["node"]["node_name"], "pay-1");
    assert_eq!(initial["node"]["ip"], json!(["10.0.0.1"]));
    assert_eq!(initial["node"]["port"], 8080);
    assert!(initial.get("sequence").is_none(), "{initial}");
    let synced = next_json(&mut lines).await;
    assert_eq!(synced["type"], "SYNCED", "{synced}");
    assert_eq!(synced["service"], "payments");

    ok(&s, "register-node payments pay-2 --ip 10.0.0.2 --port 9090").await;
    let added = next_json(&mut lines).await;
    assert_eq!(added["type"], "NODE_ADDED", "{added}");
    assert_eq!(added["group"], "default");
    assert_eq!(added["service"], "payments");
    assert_eq!(added["node"]["node_name"], "pay-2");
    assert_eq!(added["node"]["ip"], json!(["10.0.0.2"]));
    assert_eq!(added["node"]["port"], 9090);

    ok(&s, "remove-node payments pay-1").await;
    let removed = next_json(&mut lines).await;
    assert_eq!(removed["type"], "NODE_REMOVED", "{removed}");
    assert_eq!(removed["node"]["node_name"], "pay-1");

    // SIGINT ends the watch cleanly.
    let pid = child.id().expect("pid").to_string();
    let sent = tokio::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .await
        .expect("run kill");
    assert!(sent.success());
    let status = within("watch to stop on SIGINT", child.wait())
        .await
        .expect("wait");
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_in_table_form_and_for_a_group() {
    let (_t, s) = server().await;
    ok(&s, "register-node payments pay-1 --ip 10.0.0.1 --port 8080").await;

    let mut child = command(&s, "watch").spawn().expect("spawn watch");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let line = next_line(&mut lines).await;
    assert!(line.starts_with("INITIAL"), "{line}");
    assert!(
        line.contains("default/payments") && line.contains("pay-1"),
        "{line}"
    );
    assert!(line.contains("10.0.0.1") && line.contains("8080"), "{line}");
    assert_eq!(next_line(&mut lines).await, "SYNCED");
    ok(&s, "register-service ledger").await;
    let line = next_line(&mut lines).await;
    assert!(line.starts_with("SERVICE_REGISTERED"), "{line}");
    assert!(line.contains("default/ledger"), "{line}");

    child.kill().await.expect("kill watch");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_node_auto_sends_this_machines_facts() {
    let (_t, s) = server().await;
    let facts = discovered::hostfacts::gather();
    let node = ok_json(&s, "register-node payments auto-1 --auto --port 80").await;
    assert_eq!(node["cpu_count"], facts.cpu_count, "{node}");
    assert_eq!(node["memory_mb"], facts.memory_mb, "{node}");
    assert_eq!(node["os"], facts.os.as_str(), "{node}");
    assert_eq!(node["arch"], facts.arch.as_str(), "{node}");
    assert_eq!(node["fqdn"], facts.fqdn.as_str(), "{node}");
    assert_eq!(
        node["metadata"]["kernel_version"],
        facts.kernel_version.as_str(),
        "{node}"
    );
    let ips: Vec<&str> = node["ip"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(ips, facts.ip, "{node}");

    // Explicit flags win over discovered facts.
    let node = ok_json(&s, "register-node payments auto-2 --auto --ip 10.9.9.9").await;
    assert_eq!(node["ip"], json!(["10.9.9.9"]), "{node}");
    assert_eq!(node["cpu_count"], facts.cpu_count, "{node}");
}
