//! Secrets (issue 12): credentials never on the change channel or in
//! watch events, sealed at rest in Redis, no secret in any log line, and
//! Redis over TLS with an ACL user.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use discovered::proto::v1::discovery_client::DiscoveryClient;
use discovered::proto::v1::*;
use discovered::server::Defaults;
use discovered::store::{Change, RedisConfig, RedisRegistry, SecretKey, StoreEvent};
use futures::StreamExt;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::common::*;

/// A credential with a quote, a backslash and what looks like the next
/// field, ending in a backslash, so that blanking it in Lua must follow
/// JSON escapes.
fn tricky_credential(tag: &str) -> String {
    format!(r#"{tag}-{}-"q\b","backend":"x\"#, rand_word())
}

/// The random word of a [`tricky_credential`]: found in any text the
/// credential leaked into, whatever escaping that text gave the rest.
fn word_of(credential: &str) -> &str {
    credential
        .split('-')
        .find(|p| p.len() == 16 && p.chars().all(|c| c.is_ascii_hexdigit()))
        .expect("a tricky credential")
}

fn key_hex() -> String {
    format!(
        "{:032x}{:032x}",
        rand::random::<u128>(),
        rand::random::<u128>()
    )
}

fn secret_key(hex: &str) -> SecretKey {
    SecretKey::from_hex(hex).expect("test key")
}

/// A server on `redis` whose registry seals with `key`.
async fn server_with_key(redis: &RedisServer, key: Option<SecretKey>) -> TestServer {
    let mut config = RedisConfig::from_url(&redis.url(), "discovered").expect("config");
    config.secret_key = key;
    let registry = RedisRegistry::new(config).expect("registry");
    registry.check().await.expect("redis answers");
    let hub = registry.hub();
    TestServer::on((Arc::new(registry), hub), None, Defaults::default()).await
}

/// Every key in the database and everything it holds, as text.
async fn dump(conn: &mut redis::aio::MultiplexedConnection) -> String {
    let mut out = String::new();
    let mut cursor = 0u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(conn)
            .await
            .expect("SCAN");
        for key in keys {
            let kind: String = redis::cmd("TYPE")
                .arg(&key)
                .query_async(conn)
                .await
                .expect("TYPE");
            let value: Vec<String> = match kind.as_str() {
                "string" => vec![
                    redis::cmd("GET")
                        .arg(&key)
                        .query_async(conn)
                        .await
                        .expect("GET"),
                ],
                "hash" => redis::cmd("HGETALL")
                    .arg(&key)
                    .query_async(conn)
                    .await
                    .expect("HGETALL"),
                "zset" => redis::cmd("ZRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .arg("WITHSCORES")
                    .query_async(conn)
                    .await
                    .expect("ZRANGE"),
                "set" => redis::cmd("SMEMBERS")
                    .arg(&key)
                    .query_async(conn)
                    .await
                    .expect("SMEMBERS"),
                "list" => redis::cmd("LRANGE")
                    .arg(&key)
                    .arg(0)
                    .arg(-1)
                    .query_async(conn)
                    .await
                    .expect("LRANGE"),
                other => panic!("key {key} of unexpected type {other}"),
            };
            out.push_str(&format!("{key} ({kind}): {}\n", value.join(" | ")));
        }
        if next == 0 {
            return out;
        }
        cursor = next;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_change_channel_carries_no_credentials() {
    let mut t = TestServer::start(Backend::Redis).await;
    let client = redis::Client::open(t.redis().url()).expect("url");
    let mut pubsub = client.get_async_pubsub().await.expect("pubsub");
    // Everything published on this Redis, our channel and any other.
    pubsub.psubscribe("*").await.expect("PSUBSCRIBE");
    let mut messages = pubsub.into_on_message();

    let first = tricky_credential("chan-first");
    let second = tricky_credential("chan-second");
    let mut req = full_service("g", "pay");
    req.auth_credentials = first.clone();
    register_service(&mut t.client, req.clone()).await;
    req.auth_credentials = second.clone();
    register_service(&mut t.client, req).await;
    register_node(&mut t.client, full_node("g", "pay", "n1", 1)).await;
    try_remove_service(&mut t.client, "g", "pay", false)
        .await
        .expect("RemoveService");

    let mut seen = Vec::new();
    within("the service_removed message", async {
        while let Some(msg) = messages.next().await {
            let payload: String = msg.get_payload().expect("payload");
            let done = payload.contains(r#""type":"service_removed""#);
            seen.push(payload);
            if done {
                break;
            }
        }
    })
    .await;
    let all = seen.join("\n");
    for secret in [&first, &second] {
        assert!(!all.contains(word_of(secret)), "{secret} published:\n{all}");
    }
    for kind in ["service_registered", "service_updated", "service_removed"] {
        let msg = seen
            .iter()
            .find(|m| m.contains(&format!(r#""type":"{kind}""#)))
            .unwrap_or_else(|| panic!("no {kind} in\n{all}"));
        // Blanked, and the rest of the record intact after it.
        assert!(
            msg.contains(r#""auth_credentials":"","backend":"postgres-15""#),
            "{msg}"
        );
        serde_json::from_str::<serde_json::Value>(msg).expect("still JSON");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_events_carry_no_credentials_on_either_store() {
    for backend in [Backend::Memory, Backend::Redis] {
        let mut t = TestServer::start(backend).await;
        let mut events = t.hub.subscribe();
        let mut req = full_service("g", "pay");
        register_service(&mut t.client, req.clone()).await;
        req.auth_credentials = "user:n3w".into();
        register_service(&mut t.client, req).await;
        try_remove_service(&mut t.client, "g", "pay", false)
            .await
            .expect("RemoveService");
        let mut services = 0;
        within("three service changes", async {
            while services < 3 {
                if let Ok(StoreEvent::Change(ev)) = events.recv().await
                    && let Change::ServiceRegistered(s)
                    | Change::ServiceUpdated(s)
                    | Change::ServiceRemoved(s) = &ev.change
                {
                    assert_eq!(s.spec.auth_credentials, "", "{backend:?}: {:?}", ev.change);
                    assert_eq!(s.spec.backend, "postgres-15");
                    services += 1;
                }
            }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_are_encrypted_at_rest_and_revealed_on_request() {
    let redis = RedisServer::start();
    let mut t = server_with_key(&redis, Some(secret_key(&key_hex()))).await;
    let mut secrets = Vec::new();
    for i in 0..5 {
        let mut req = full_service("g", &format!("svc{i}"));
        req.auth_credentials = tricky_credential(&format!("at-rest-{i}"));
        secrets.push(req.auth_credentials.clone());
        register_service(&mut t.client, req).await;
        register_node(&mut t.client, full_node("g", &format!("svc{i}"), "n1", i)).await;
    }
    let mut conn = redis.connection().await;
    let stored = dump(&mut conn).await;
    for secret in &secrets {
        assert!(
            !stored.contains(word_of(secret)),
            "{secret} stored in plain:\n{stored}"
        );
    }
    assert_eq!(stored.matches("enc:v1:").count(), 5, "{stored}");
    for (i, secret) in secrets.iter().enumerate() {
        let shown = get_service(&mut t.client, "g", &format!("svc{i}"), true)
            .await
            .expect("GetService reveal");
        assert_eq!(&shown.auth_credentials, secret);
        let hidden = get_service(&mut t.client, "g", &format!("svc{i}"), false)
            .await
            .expect("GetService");
        assert_eq!(hidden.auth_credentials, "");
    }

    // The same credentials again: the stored value stays, and watchers
    // see no change (a fresh nonce would make every re-registration one).
    let service_key = "discovered:v2:{g/svc0}:service";
    let before: String = redis::cmd("GET")
        .arg(service_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mut events = t.hub.subscribe();
    let mut req = full_service("g", "svc0");
    req.auth_credentials = secrets[0].clone();
    register_service(&mut t.client, req.clone()).await;
    let after: String = redis::cmd("GET")
        .arg(service_key)
        .query_async(&mut conn)
        .await
        .unwrap();
    let cipher = |s: &str| s.split("enc:v1:").nth(1).map(|c| c[..20].to_string());
    assert_eq!(
        cipher(&before),
        cipher(&after),
        "re-sealed an unchanged value"
    );
    req.auth_credentials = "changed".into();
    register_service(&mut t.client, req).await;
    let first = within("a change", events.recv()).await.expect("event");
    let StoreEvent::Change(ev) = first else {
        panic!("resync")
    };
    assert!(
        matches!(ev.change, Change::ServiceUpdated(_)),
        "{:?}",
        ev.change
    );
    let shown = get_service(&mut t.client, "g", "svc0", true).await.unwrap();
    assert_eq!(shown.auth_credentials, "changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_from_before_the_key_is_read_then_sealed_on_the_next_write() {
    let redis = RedisServer::start();
    let mut plain = server_with_key(&redis, None).await;
    register_service(&mut plain.client, full_service("g", "old")).await;
    let mut conn = redis.connection().await;
    assert!(
        dump(&mut conn).await.contains("user:s3cret"),
        "stored as given without a key"
    );

    let mut keyed = server_with_key(&redis, Some(secret_key(&key_hex()))).await;
    let shown = get_service(&mut keyed.client, "g", "old", true)
        .await
        .unwrap();
    assert_eq!(shown.auth_credentials, "user:s3cret");
    register_service(&mut keyed.client, full_service("g", "old")).await;
    let stored = dump(&mut conn).await;
    assert!(!stored.contains("user:s3cret"), "{stored}");
    assert!(stored.contains("enc:v1:"), "{stored}");
    let shown = get_service(&mut keyed.client, "g", "old", true)
        .await
        .unwrap();
    assert_eq!(shown.auth_credentials, "user:s3cret");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_that_cannot_be_opened_fail_the_reveal_only() {
    let redis = RedisServer::start();
    let hex = key_hex();
    let mut keyed = server_with_key(&redis, Some(secret_key(&hex))).await;
    register_service(&mut keyed.client, full_service("g", "pay")).await;
    register_node(&mut keyed.client, full_node("g", "pay", "n1", 1)).await;
    register_service(&mut keyed.client, full_service("g", "other")).await;

    let mut no_key = server_with_key(&redis, None).await;
    let mut wrong_key = server_with_key(&redis, Some(secret_key(&key_hex()))).await;
    for (what, t, needle) in [
        ("no key", &mut no_key, "no secret key"),
        ("wrong key", &mut wrong_key, "do not decrypt"),
    ] {
        let s = expect_code(
            get_service(&mut t.client, "g", "pay", true).await,
            Code::FailedPrecondition,
            what,
        );
        assert!(
            s.message().contains("g/pay") && s.message().contains(needle),
            "{what}: {s:?}"
        );
        assert!(!s.message().contains("s3cret"), "{s:?}");
        // Everything else goes on.
        let hidden = get_service(&mut t.client, "g", "pay", false)
            .await
            .expect(what);
        assert_eq!(hidden.backend, "postgres-15");
        assert!(
            !get_nodes(&mut t.client, "g", "pay").await.is_empty(),
            "{what}"
        );
        assert_eq!(
            services(&mut t.client, "g").await,
            ["other", "pay"],
            "{what}"
        );
        register_node(&mut t.client, full_node("g", "pay", "n2", 2)).await;
    }

    // A sealed value copied into another service's record does not open.
    let mut conn = redis.connection().await;
    let pay: String = redis::cmd("GET")
        .arg("discovered:v2:{g/pay}:service")
        .query_async(&mut conn)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("discovered:v2:{g/other}:service")
        .arg(&pay)
        .query_async(&mut conn)
        .await
        .unwrap();
    let s = expect_code(
        get_service(&mut keyed.client, "g", "other", true).await,
        Code::FailedPrecondition,
        "copied",
    );
    assert!(s.message().contains("g/other"), "{s:?}");
    let shown = get_service(&mut keyed.client, "g", "pay", true)
        .await
        .unwrap();
    assert_eq!(shown.auth_credentials, "user:s3cret");
}

/// The TLS-only Redis with the ACL user, reached in-process through a
/// rediss:// URL trusting the test CA: every kind of call works under the
/// minimal ACL rule, and what is stored holds no credential in plain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_over_tls_with_an_acl_user() {
    let redis = TlsRedis::start();
    let ca = std::fs::read(redis.ca_file()).expect("ca");
    let mut config = RedisConfig::from_url(&redis.url(), "discovered")
        .and_then(|c| c.with_tls_ca(ca))
        .expect("config");
    config.secret_key = Some(secret_key(&key_hex()));
    let registry = RedisRegistry::new(config).expect("registry");
    registry
        .check()
        .await
        .expect("the TLS Redis answers the ACL user");
    let hub = registry.hub();
    let mut t = TestServer::on((Arc::new(registry), hub), None, Defaults::default()).await;

    let mut watch = Watch::open(&mut t.client, "g", "pay", None).await;
    watch.initial("g", "pay").await;
    register_service(&mut t.client, full_service("g", "pay")).await;
    register_node(&mut t.client, full_node("g", "pay", "n1", 1)).await;
    register_node(&mut t.client, bare_node("g", "pay", "short", Some(1))).await;
    until(&mut watch, EventType::NodeAdded, 2).await;
    // The sweeper (a script under the ACL) expires the 1 s node.
    until(&mut watch, EventType::NodeExpired, 1).await;
    let shown = get_service(&mut t.client, "g", "pay", true).await.unwrap();
    assert_eq!(shown.auth_credentials, "user:s3cret");
    assert_eq!(services(&mut t.client, "g").await, ["pay"]);
    let stored = dump(&mut redis.admin_connection().await).await;
    assert!(!stored.contains("user:s3cret"), "{stored}");
    try_remove_group(&mut t.client, "g", false)
        .await
        .expect("RemoveServiceGroup");
    assert_eq!(health(&t, "").await, Some(ServingStatus::Serving));

    // Without the CA the certificate is not trusted: one clear failure.
    let untrusted = RedisConfig::from_url(&redis.url(), "discovered").expect("config");
    let err = RedisRegistry::new(untrusted)
        .expect("registry")
        .check()
        .await
        .expect_err("an untrusted certificate");
    assert!(!err.to_string().contains(&redis.password), "{err}");
}

/// Reads events until `n` of kind `want` came (others are skipped).
async fn until(watch: &mut Watch, want: EventType, n: usize) {
    let mut got = 0;
    while got < n {
        if kind(&watch.next().await) == want {
            got += 1;
        }
    }
}

/// Reads a child's stdout or stderr to the end on a thread of its own.
fn drain(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut out = Vec::new();
        let _ = from.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    })
}

/// The real binary at `RUST_LOG=debug,discovered=trace` (every crate at
/// debug, ours at trace; trace for every crate logs each HTTP/2 frame and
/// slowed the tests running beside it until `large` failed its bounds) on
/// the TLS Redis with the ACL user:
/// registrations with credentials, reveals, a watch, a refused reveal and
/// a shutdown, and not one secret in anything it printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_any_log_line() {
    let redis = TlsRedis::start();
    let hex = key_hex();
    let key_file = redis.dir.join("secret.key");
    std::fs::write(&key_file, format!("{hex}\n")).expect("key file");
    let port = free_port();
    let line = format!(
        "serve --listen 127.0.0.1:{port} --redis-url {} --redis-tls-ca {} --secret-key-file {} --node-ttl 1",
        redis.url(),
        redis.ca_file().display(),
        key_file.display()
    );
    let mut proc = Proc::spawn(&line, &[("RUST_LOG", "debug,discovered=trace")]);
    let stdout = drain(proc.child.stdout.take().expect("stdout"));
    let stderr = drain(proc.child.stderr.take().expect("stderr"));
    let mut client = eventually("the server to listen", || async move {
        DiscoveryClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .ok()
    })
    .await;

    let mut creds = Vec::new();
    let mut watch = Watch::open(&mut client, "g", "", None).await;
    watch.initial("g", "").await;
    for i in 0..3 {
        let mut req = full_service("g", &format!("svc{i}"));
        req.auth_credentials = tricky_credential(&format!("log-{i}"));
        creds.push(req.auth_credentials.clone());
        register_service(&mut client, req).await;
        register_node(&mut client, full_node("g", &format!("svc{i}"), "n1", i)).await;
        let shown = get_service(&mut client, "g", &format!("svc{i}"), true)
            .await
            .unwrap();
        assert_eq!(shown.auth_credentials, creds[i as usize]);
    }
    until(&mut watch, EventType::NodeAdded, 3).await;
    // A value copied to another service: the refusal is logged nowhere
    // with the value either.
    let mut admin = redis.admin_connection().await;
    let raw: String = redis::cmd("GET")
        .arg("discovered:v2:{g/svc0}:service")
        .query_async(&mut admin)
        .await
        .unwrap();
    let _: () = redis::cmd("SET")
        .arg("discovered:v2:{g/svc1}:service")
        .arg(&raw)
        .query_async(&mut admin)
        .await
        .unwrap();
    expect_code(
        get_service(&mut client, "g", "svc1", true).await,
        Code::FailedPrecondition,
        "copied",
    );
    drop(watch);
    tokio::time::sleep(Duration::from_millis(1500)).await; // expiries
    proc.signal("TERM");
    let (status, _) = proc.wait_async().await;
    assert!(status.success(), "{status}");
    let out = format!(
        "{}{}",
        stdout.join().expect("stdout"),
        stderr.join().expect("stderr")
    );
    assert!(
        out.contains("DEBUG") || out.contains("TRACE"),
        "not at trace:\n{out}"
    );
    let secrets = [
        ("the Redis password", redis.password.as_str()),
        ("the admin password", redis.admin_password.as_str()),
        ("the secret key", hex.as_str()),
    ];
    for (what, secret) in secrets {
        assert!(!out.contains(secret), "{what} in the output");
    }
    for cred in &creds {
        // The random middle part of each credential, whatever escaping a
        // log line gives the rest.
        assert!(!out.contains(word_of(cred)), "a credential in the output");
    }
    // The password came on the command line (in the URL): one warning,
    // naming the flag.
    let warnings: Vec<&str> = out
        .lines()
        .filter(|l| l.contains("given on the command line"))
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("--redis-url") && warnings[0].contains("DISCOVERED_REDIS_URL"));

    // The same from the environment: no warning.
    let port = free_port();
    let line = format!(
        "serve --listen 127.0.0.1:{port} --redis-tls-ca {}",
        redis.ca_file().display()
    );
    let url = redis.url();
    let mut proc = Proc::spawn(&line, &[("DISCOVERED_REDIS_URL", url.as_str())]);
    let stderr = drain(proc.child.stderr.take().expect("stderr"));
    let mut client = eventually("the server to listen", || async move {
        DiscoveryClient::connect(format!("http://127.0.0.1:{port}"))
            .await
            .ok()
    })
    .await;
    get_nodes(&mut client, "g", "svc0").await;
    // The SIGTERM handler is installed once serving starts, a moment
    // after the port opens; a signal before it kills the process.
    tokio::time::sleep(Duration::from_millis(300)).await;
    proc.signal("TERM");
    let (status, _) = proc.wait_async().await;
    assert!(status.success(), "{status}");
    let out = stderr.join().expect("stderr");
    assert!(!out.contains("command line"), "{out}");
    assert!(!out.contains(&redis.password), "password in the output");
}
