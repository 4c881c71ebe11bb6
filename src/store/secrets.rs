//! `auth_credentials` encrypted at rest: the server's secret key and the
//! stored form of a sealed value.
//!
//! A value is sealed with XChaCha20-Poly1305 (RustCrypto `chacha20poly1305`)
//! under a fresh random 24-byte nonce per write and stored as
//! `enc:v1:<base64(nonce || ciphertext || tag)>` (standard alphabet, with
//! padding). The associated data is the service's `group/service`, so a
//! value copied into another service's record does not open there. A value
//! without the prefix is plaintext written before a key was configured: it
//! is read as it is, and sealed on the next write.
//!
//! Nothing here formats a key or a plaintext: errors name the service and
//! the problem only, and [`SecretKey`]'s `Debug` prints no bytes.

use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

use crate::model::ServiceKey;

/// What every sealed value starts with; the version names the cipher and
/// layout, so a later one can be read beside it.
pub const SEALED_PREFIX: &str = "enc:v1:";

/// The XChaCha20 nonce length.
const NONCE_LEN: usize = 24;

/// The 32-byte key that seals `auth_credentials`.
#[derive(Clone)]
pub struct SecretKey {
    cipher: XChaCha20Poly1305,
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the bytes: a Debug of a config must not leak the key.
        f.write_str("SecretKey(..)")
    }
}

/// Why a key file was refused; names the file and the problem, never its
/// content.
#[derive(Debug, thiserror::Error)]
pub enum SecretKeyError {
    /// The file cannot be read.
    #[error("cannot read the secret key file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file does not hold 64 hex digits.
    #[error(
        "the secret key file {path} must hold 64 hex digits (32 bytes), as `openssl rand -hex 32` writes"
    )]
    Format {
        /// The file.
        path: String,
    },
}

impl SecretKey {
    /// The key in `path`: 64 hex digits, surrounding whitespace ignored.
    pub fn from_file(path: &Path) -> Result<Self, SecretKeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| SecretKeyError::Read {
            path: shown.clone(),
            source,
        })?;
        Self::from_hex(&text).ok_or(SecretKeyError::Format { path: shown })
    }

    /// The key written as 64 hex digits (surrounding whitespace ignored).
    pub fn from_hex(text: &str) -> Option<Self> {
        let text = text.trim();
        if text.len() != 64 || !text.is_ascii() {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Self::from_bytes(bytes))
    }

    /// The key of 32 raw bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(&bytes.into()),
        }
    }

    /// `plaintext` sealed for `service`, in its stored form. The empty
    /// value stays empty: "no credentials" holds nothing to hide.
    pub fn seal(&self, service: &ServiceKey, plaintext: &str) -> String {
        if plaintext.is_empty() {
            return String::new();
        }
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let aad = associated_data(service);
        let sealed = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            // Only a message beyond 256 GiB fails to encrypt; ours are
            // at most 4 KiB (validated), so this cannot happen.
            .unwrap_or_default();
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        format!("{SEALED_PREFIX}{}", STANDARD.encode(out))
    }

    fn open_sealed(&self, service: &ServiceKey, body: &str) -> Result<String, RevealError> {
        let corrupt = || RevealError::Corrupt {
            service: shown(service),
        };
        let raw = STANDARD.decode(body).map_err(|_| corrupt())?;
        if raw.len() < NONCE_LEN {
            return Err(corrupt());
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let aad = associated_data(service);
        let plain = self
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| RevealError::WrongKey {
                service: shown(service),
            })?;
        String::from_utf8(plain).map_err(|_| corrupt())
    }
}

/// What binds a sealed value to its service.
fn associated_data(service: &ServiceKey) -> String {
    format!(
        "discovered auth_credentials v1 {}/{}",
        service.group, service.service
    )
}

/// `group/service`, for messages.
fn shown(service: &ServiceKey) -> String {
    format!("{}/{}", service.group, service.service)
}

/// Whether a stored value is sealed (else it is plaintext).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(SEALED_PREFIX)
}

/// The plaintext of a stored value of `service`: a sealed one opened with
/// `key`, a plaintext one as it is.
pub fn open(
    key: Option<&SecretKey>,
    service: &ServiceKey,
    stored: &str,
) -> Result<String, RevealError> {
    let Some(body) = stored.strip_prefix(SEALED_PREFIX) else {
        return Ok(stored.to_string());
    };
    match key {
        Some(key) => key.open_sealed(service, body),
        None => Err(RevealError::NoKey {
            service: shown(service),
        }),
    }
}

/// Why stored credentials cannot be revealed. Only GetService with
/// `reveal_credentials` fails with it (FAILED_PRECONDITION); every other
/// call goes on. The message names the service, never the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RevealError {
    /// A sealed value, and the server has no key.
    #[error(
        "the auth_credentials of {service} are encrypted and this server has no secret key (--secret-key-file)"
    )]
    NoKey {
        /// `group/service`.
        service: String,
    },
    /// The key does not open the value: another key sealed it, or it was
    /// copied from another service.
    #[error(
        "the auth_credentials of {service} do not decrypt with this server's secret key: sealed with another key, or copied from another service"
    )]
    WrongKey {
        /// `group/service`.
        service: String,
    },
    /// The stored value has the sealed prefix but is not one.
    #[error("the encrypted auth_credentials of {service} are corrupt")]
    Corrupt {
        /// `group/service`.
        service: String,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SecretKey {
        SecretKey::from_bytes([b; 32])
    }

    #[test]
    fn a_sealed_value_opens_for_its_service_only() {
        let svc = ServiceKey::new("g", "s");
        let sealed = key(1).seal(&svc, "user:s3cret");
        assert!(sealed.starts_with(SEALED_PREFIX), "{sealed}");
        assert!(!sealed.contains("s3cret"));
        assert_ne!(sealed, key(1).seal(&svc, "user:s3cret"), "nonce reused");
        assert_eq!(open(Some(&key(1)), &svc, &sealed).unwrap(), "user:s3cret");
        let other = ServiceKey::new("g", "t");
        assert!(matches!(
            open(Some(&key(1)), &other, &sealed),
            Err(RevealError::WrongKey { .. })
        ));
        assert!(matches!(
            open(Some(&key(2)), &svc, &sealed),
            Err(RevealError::WrongKey { .. })
        ));
        assert!(matches!(
            open(None, &svc, &sealed),
            Err(RevealError::NoKey { .. })
        ));
        assert!(matches!(
            open(Some(&key(1)), &svc, "enc:v1:!!"),
            Err(RevealError::Corrupt { .. })
        ));
    }

    #[test]
    fn plaintext_and_empty_values_read_as_they_are() {
        let svc = ServiceKey::new("g", "s");
        assert_eq!(open(Some(&key(1)), &svc, "plain").unwrap(), "plain");
        assert_eq!(open(None, &svc, "plain").unwrap(), "plain");
        assert_eq!(key(1).seal(&svc, ""), "");
    }

    #[test]
    fn a_key_is_64_hex_digits_and_never_printed() {
        let hex = "00112233445566778899aabbccddeeff00112233445566778899AABBCCDDEEFF\n";
        let k = SecretKey::from_hex(hex).expect("valid key");
        assert_eq!(format!("{k:?}"), "SecretKey(..)");
        assert!(SecretKey::from_hex(&hex[..62]).is_none());
        assert!(SecretKey::from_hex(&hex.replace('0', "g")).is_none());
    }
}
