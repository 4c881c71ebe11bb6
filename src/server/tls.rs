//! TLS and mutual TLS for the server's own connection loop, with
//! certificates that are reloaded without dropping a connection.
//!
//! The certificate chain, its key and (for mutual TLS) the client CA bundle
//! are PEM files. [`TlsConfig`] holds the rustls configuration built from
//! them; every new handshake takes the configuration current at that
//! moment, so a reload changes what new connections get while open ones
//! keep the session they negotiated.
//!
//! Reloads happen when the files' contents change (polled every
//! [`POLL`]: comparing contents rather than modification times also
//! catches the symlink swap Kubernetes does for a mounted secret, and
//! needs no file-notification machinery) and whenever the server's
//! [`Reload`](super::Reload) trigger fires (SIGHUP). A reload that fails
//! (unreadable file, bad PEM, a key that does not match the certificate)
//! keeps the configuration in use and logs an error naming the file.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use rustls::RootCertStore;

use super::reload::Reloadable;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ServerConfig, WebPkiClientVerifier};
use tokio_rustls::TlsAcceptor;

/// How often the files are read to see whether they changed (the one
/// interval of every file the server follows).
pub const POLL: Duration = super::reload::POLL;

/// Where the server's TLS material is (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The certificate chain, leaf first.
    pub cert: PathBuf,
    /// The private key of the leaf certificate (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// CA certificates that client certificates must chain to; with it, a
    /// client without a valid certificate is refused (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Why the TLS files could not be used; names the file at fault.
#[derive(Debug, thiserror::Error)]
#[error("TLS file {}: {why}", path.display())]
pub struct TlsError {
    /// The file at fault.
    pub path: PathBuf,
    /// What is wrong with it.
    pub why: String,
}

impl TlsError {
    fn new(path: &Path, why: impl ToString) -> Self {
        Self {
            path: path.to_path_buf(),
            why: why.to_string(),
        }
    }
}

/// The files' bytes, as last read: a poll reloads only when they differ.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Contents {
    cert: Vec<u8>,
    key: Vec<u8>,
    client_ca: Option<Vec<u8>>,
}

/// The server's current TLS configuration and the files it comes from.
#[derive(Debug)]
pub struct TlsConfig {
    files: TlsFiles,
    current: RwLock<Arc<ServerConfig>>,
    /// The contents last read, whether or not they loaded: a broken file is
    /// reported once, not at every poll.
    seen: Mutex<Contents>,
}

impl TlsConfig {
    /// Reads and checks the files: the start-up load, whose failure is
    /// the caller's to report.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let contents = read(&files)?;
        let config = build(&files, &contents)?;
        Ok(Self {
            files,
            current: RwLock::new(Arc::new(config)),
            seen: Mutex::new(contents),
        })
    }

    /// Reads the files again and, if they load, makes new handshakes use
    /// them (even when unchanged: what an operator's SIGHUP asks for). On
    /// failure the configuration in use stays. Logs either way.
    pub fn reload_now(&self) -> Result<(), TlsError> {
        self.reload(true)
    }

    /// Reloads if the files changed since they were last read.
    fn poll(&self) {
        let _ = self.reload(false);
    }

    fn reload(&self, forced: bool) -> Result<(), TlsError> {
        let result = read(&self.files).and_then(|contents| {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if !forced && *seen == contents {
                return Ok(None);
            }
            *seen = contents.clone();
            build(&self.files, &contents).map(Some)
        });
        match result {
            Ok(None) => Ok(()),
            Ok(Some(config)) => {
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(config);
                tracing::info!(cert = %self.files.cert.display(), "TLS certificate reloaded; new connections use it");
                Ok(())
            }
            Err(e) => {
                // An unreadable file is reported at every poll only if it
                // stays unreadable; that is rare (a half-done swap) and
                // worth seeing.
                tracing::error!(error = %e, "TLS reload failed; still serving the previous certificate");
                Err(e)
            }
        }
    }

    /// The acceptor for a new connection: the configuration current now.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        TlsAcceptor::from(config)
    }

    /// The acceptor for a connection to the HTTP side port, which speaks
    /// HTTP/1.1 as well as HTTP/2 (a browser or Prometheus may offer
    /// either): the same certificates, both protocols offered.
    pub(crate) fn http_acceptor(&self) -> TlsAcceptor {
        let mut config =
            ServerConfig::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner));
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        TlsAcceptor::from(Arc::new(config))
    }
}

impl Reloadable for TlsConfig {
    fn reload_if_changed(&self) {
        self.poll();
    }

    fn reload_forced(&self) {
        let _ = self.reload_now();
    }
}

fn read(files: &TlsFiles) -> Result<Contents, TlsError> {
    let read = |path: &Path| std::fs::read(path).map_err(|e| TlsError::new(path, e));
    Ok(Contents {
        cert: read(&files.cert)?,
        key: read(&files.key)?,
        client_ca: files.client_ca.as_deref().map(read).transpose()?,
    })
}

/// The rustls configuration for `contents` (read from `files`, which name
/// the file at fault in an error).
fn build(files: &TlsFiles, contents: &Contents) -> Result<ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let certs = certificates(&files.cert, &contents.cert)?;
    let key = PrivateKeyDer::from_pem_slice(&contents.key)
        .map_err(|e| TlsError::new(&files.key, format!("no usable private key: {e}")))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(rustls::DEFAULT_VERSIONS)
        .map_err(|e| TlsError::new(&files.cert, e))?;
    let builder = match (&files.client_ca, &contents.client_ca) {
        (Some(path), Some(pem)) => {
            builder.with_client_cert_verifier(client_verifier(path, pem, provider)?)
        }
        _ => builder.with_no_client_auth(),
    };
    // rustls checks that the key is the certificate's.
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::new(&files.key, format!("does not go with the certificate: {e}")))?;
    // gRPC is HTTP/2 only.
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Every certificate of a PEM file; at least one.
fn certificates(path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::new(path, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(TlsError::new(path, "holds no CERTIFICATE"));
    }
    Ok(certs)
}

/// A verifier that requires a client certificate chaining to the CAs of
/// `pem`.
fn client_verifier(
    path: &Path,
    pem: &[u8],
    provider: Arc<CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, pem)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::new(path, format!("not a usable CA certificate: {e}")))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
        .build()
        .map_err(|e| TlsError::new(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A self-signed certificate and its key, PEM.
    fn pair() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn files(dir: &Path, (cert, key): &(String, String)) -> TlsFiles {
        std::fs::create_dir_all(dir).unwrap();
        let files = TlsFiles {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            client_ca: None,
        };
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    fn current(tls: &TlsConfig) -> Arc<ServerConfig> {
        tls.current.read().unwrap().clone()
    }

    #[test]
    fn a_failed_reload_keeps_the_config_and_a_good_one_replaces_it() {
        let dir = std::env::temp_dir().join(format!("discovered-tls-unit-{}", std::process::id()));
        let files = files(&dir, &pair());
        let tls = TlsConfig::load(files.clone()).unwrap();
        let first = current(&tls);

        // Unchanged files: a poll does nothing, a forced reload rebuilds.
        tls.poll();
        assert!(Arc::ptr_eq(&first, &current(&tls)));
        tls.reload_now().unwrap();
        let second = current(&tls);
        assert!(!Arc::ptr_eq(&first, &second));

        // A key of another certificate: refused, naming the key file.
        std::fs::write(&files.key, pair().1).unwrap();
        let error = tls.reload_now().unwrap_err();
        assert_eq!(error.path, files.key);
        assert!(Arc::ptr_eq(&second, &current(&tls)));

        // Garbage in the certificate: refused, naming it.
        std::fs::write(&files.cert, "garbage").unwrap();
        assert_eq!(tls.reload_now().unwrap_err().path, files.cert);
        assert!(Arc::ptr_eq(&second, &current(&tls)));

        // A good pair again: a poll takes it, ALPN h2 included.
        let _ = self::files(&dir, &pair());
        tls.poll();
        let third = current(&tls);
        assert!(!Arc::ptr_eq(&second, &third));
        assert_eq!(third.alpn_protocols, [b"h2".to_vec()]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
