//! [`TlsRedis`]: a `redis-server` that speaks TLS only, with a certificate
//! from a CA made for the test (rcgen), and an ACL user holding the
//! minimal rule the README documents ([`ACL_RULE`]).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

use super::{WAIT, free_port, redis_server_binary};

/// The ACL user the server logs in as.
pub const ACL_USER: &str = "discovered";

/// The minimal ACL rule for a server with the default key prefix on
/// database 0, exactly as the README gives it (`<password>` aside).
pub const ACL_RULE: &str = "~discovered:* resetchannels &discovered:v2:changes &__keyspace@0__:discovered:v2:* -@all +@read +@write +@scripting +@pubsub +ping +time +hello +auth +select +config|get +config|set -flushall -flushdb -keys -script|flush -script|kill";

/// A TLS-only Redis on 127.0.0.1 with an ACL user and an admin user, its
/// certificates in a directory of its own. The process is killed and the
/// directory removed on drop, also when the test panics.
pub struct TlsRedis {
    /// The TLS port (the plain port is off).
    pub port: u16,
    /// The ACL user's password.
    pub password: String,
    /// The admin user's password (`admin`, every right), for the test's
    /// own look at what is stored.
    pub admin_password: String,
    /// Where the certificates are.
    pub dir: PathBuf,
    child: Option<Child>,
}

impl TlsRedis {
    /// Makes a CA and a certificate for 127.0.0.1 and localhost signed by
    /// it, starts Redis with them, and waits until the TLS port accepts.
    pub fn start() -> Self {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
            "tls-redis-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).expect("cert dir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "discovered test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA certificate");
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])
            .expect("server params");
        let cert = params.signed_by(&key, &ca).expect("server certificate");
        std::fs::write(dir.join("ca.pem"), ca.pem()).expect("write ca");
        std::fs::write(dir.join("redis.pem"), cert.pem()).expect("write cert");
        std::fs::write(dir.join("redis.key"), key.serialize_pem()).expect("write key");

        let mut server = Self {
            port: free_port(),
            password: format!("acl-pw-{}", rand_word()),
            admin_password: format!("admin-pw-{}", rand_word()),
            dir,
            child: None,
        };
        let path = |f: &str| server.dir.join(f).display().to_string();
        let mut user = vec![
            "--user".to_string(),
            ACL_USER.into(),
            "on".into(),
            format!(">{}", server.password),
        ];
        user.extend(ACL_RULE.split(' ').map(str::to_string));
        let child = Command::new(redis_server_binary())
            .args(["--port", "0"])
            .args(["--tls-port", &server.port.to_string()])
            .args(["--tls-cert-file", &path("redis.pem")])
            .args(["--tls-key-file", &path("redis.key")])
            .args(["--tls-ca-cert-file", &path("ca.pem")])
            .args(["--tls-auth-clients", "no"])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "no"])
            .args(&user)
            .args([
                "--user",
                "admin",
                "on",
                &format!(">{}", server.admin_password),
                "~*",
                "&*",
                "+@all",
            ])
            .args(["--user", "default", "off"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot spawn redis-server");
        server.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while std::net::TcpStream::connect(("127.0.0.1", server.port)).is_err() {
            let exited = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "TLS redis-server exited: {exited:?}");
            assert!(Instant::now() < deadline, "TLS redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }

    /// The CA file to trust.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// `rediss://discovered:<password>@127.0.0.1:port/0`
    pub fn url(&self) -> String {
        format!(
            "rediss://{ACL_USER}:{}@127.0.0.1:{}/0",
            self.password, self.port
        )
    }

    /// A connection as the admin user, trusting the test CA.
    pub async fn admin_connection(&self) -> redis::aio::MultiplexedConnection {
        let url = format!(
            "rediss://admin:{}@127.0.0.1:{}/0",
            self.admin_password, self.port
        );
        let ca = std::fs::read(self.ca_file()).expect("read ca");
        redis::Client::build_with_tls(
            url.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca),
            },
        )
        .expect("tls client")
        .get_multiplexed_async_connection()
        .await
        .expect("connect to the TLS redis as admin")
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A random word, so that every run's secrets differ.
pub fn rand_word() -> String {
    format!("{:016x}", rand::random::<u64>())
}
