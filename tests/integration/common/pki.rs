//! Certificates made on the spot for the TLS tests (rcgen): CAs, a server
//! certificate for 127.0.0.1 and localhost, client certificates with a SAN
//! URI; the PEM files a server reads, in a directory of their own; and a
//! raw TLS handshake that says which certificate a server serves.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use discovered::client::{ConnectOptions, TlsOptions};
use discovered::server::TlsFiles;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use rustls::pki_types::{CertificateDer, ServerName};

/// The SAN URI of the test clients' certificates.
pub const AGENT_ID: &str = "spiffe://example.org/agent";

/// A certificate authority.
pub struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A certificate with its key, PEM, and the certificate's DER.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: Vec<u8>,
}

impl Ca {
    /// A new self-signed CA called `name`.
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("key");
        Self {
            issuer: CertifiedIssuer::self_signed(params, key).expect("CA"),
        }
    }

    /// The CA's certificate, PEM.
    pub fn pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA's certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        self.issuer.der().clone()
    }

    fn leaf(&self, sans: Vec<SanType>, usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.extended_key_usages = vec![usage];
        params.distinguished_name.push(DnType::CommonName, "test");
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self) -> Leaf {
        self.leaf(
            vec![
                SanType::IpAddress([127, 0, 0, 1].into()),
                SanType::DnsName("localhost".try_into().expect("dns")),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate with the SAN URI [`AGENT_ID`] and a DNS name.
    pub fn client(&self) -> Leaf {
        self.leaf(
            vec![
                SanType::DnsName("agent.example.org".try_into().expect("dns")),
                SanType::URI(AGENT_ID.try_into().expect("uri")),
            ],
            ExtendedKeyUsagePurpose::ClientAuth,
        )
    }
}

/// A directory of PEM files, removed when dropped.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new() -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "discovered-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("temp dir");
        Self(path)
    }

    /// Writes `text` to `name` in the directory; returns its path.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).expect("write PEM");
        path
    }

    /// `name`'s path.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes a server's `cert.pem` and `key.pem` (and `client-ca.pem`
    /// when given) and returns the files for its settings.
    pub fn server_files(&self, leaf: &Leaf, client_ca: Option<&Ca>) -> TlsFiles {
        TlsFiles {
            cert: self.write("cert.pem", &leaf.cert_pem),
            key: self.write("key.pem", &leaf.key_pem),
            client_ca: client_ca.map(|ca| self.write("client-ca.pem", &ca.pem())),
        }
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Client options trusting `ca`, with `identity` for mutual TLS.
pub fn trusting(ca: &Ca, identity: Option<&Leaf>) -> ConnectOptions {
    ConnectOptions {
        tls: Some(TlsOptions {
            ca_pem: Some(ca.pem().into_bytes()),
            identity: identity.map(|l| {
                (
                    l.cert_pem.clone().into_bytes(),
                    l.key_pem.clone().into_bytes(),
                )
            }),
            domain: None,
        }),
        token: None,
    }
}

/// The leaf certificate the server at `addr` serves now, through a raw TLS
/// handshake (trusting any of `cas`); `Err` if the handshake fails.
pub async fn served_certificate(
    addr: std::net::SocketAddr,
    cas: &[&Ca],
) -> Result<Vec<u8>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for ca in cas {
        roots.add(ca.der()).expect("CA");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let name = ServerName::IpAddress(addr.ip().into());
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    assert_eq!(
        session.alpn_protocol(),
        Some(&b"h2"[..]),
        "the server speaks h2"
    );
    let leaf = session
        .peer_certificates()
        .and_then(|c| c.first())
        .ok_or("no server certificate")?;
    Ok(leaf.to_vec())
}
