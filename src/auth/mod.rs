//! Who may call the server, and what they may do (issue 12): bearer tokens
//! and client-certificate identities from an auth file, each with a role
//! and a scope.
//!
//! - [`file`](mod@file): the auth file's format and its strict parsing.
//! - [`policy`]: roles, scopes, [`Caller`] and [`Caller::authorize`].
//! - [`Auth`]: the file in force, re-read when it changes.
//!
//! How a request is authenticated ([`Policy::authenticate`]): a presented
//! bearer token must be valid (an unknown one is refused, even with a
//! client certificate, so a mistyped token is noticed instead of silently
//! falling back to another identity); without a token, a verified client
//! certificate whose subject an `[[identity]]` names applies (the first of
//! its subjects, in certificate order, that one names); otherwise the
//! request is unauthenticated.

pub mod file;
pub mod policy;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use subtle::{ConditionallySelectable, ConstantTimeEq};

pub use file::{AuthFile, AuthFileError, IdentityEntry, TokenEntry};
pub use policy::{Action, Caller, Denied, How, Role, Scope};

/// How often the server looks at the file to see whether it changed (the
/// one interval of every file it follows).
pub const POLL_INTERVAL: Duration = crate::server::reload::POLL;

/// SHA-256 of `token` as 64 lowercase hex digits: what a `[[token]]`
/// entry's `sha256` holds (the same as `printf %s TOKEN | sha256sum`).
pub fn hash_token(token: &str) -> String {
    sha256(token).iter().map(|b| format!("{b:02x}")).collect()
}

fn sha256(token: &str) -> [u8; 32] {
    let digest = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Why a request could not be authenticated: UNAUTHENTICATED, with this
/// as its message. Never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    /// Neither a token nor a certificate an identity names.
    #[error(
        "no credentials: send the header `authorization: Bearer <token>` with a token of the server's auth file"
    )]
    Missing,
    /// An `authorization` header that is not `Bearer <token>`.
    #[error("the authorization header is not `Bearer <token>`")]
    Malformed,
    /// A token that no entry has.
    #[error("the bearer token is not one of the server's auth file")]
    UnknownToken,
    /// A certificate whose subjects no identity names.
    #[error("no identity of the server's auth file names the client certificate ({0})")]
    UnknownCertificate(String),
}

/// An auth file ready to authenticate requests.
#[derive(Debug, Clone)]
pub struct Policy {
    file: AuthFile,
}

impl Policy {
    /// The policy of `file`.
    pub fn new(file: AuthFile) -> Self {
        Self { file }
    }

    /// The file it was made from.
    pub fn file(&self) -> &AuthFile {
        &self.file
    }

    /// Who a request is: from its `authorization` header value, if it has
    /// one, else from the subjects of its verified client certificate, if
    /// any (see the module documentation for the precedence).
    pub fn authenticate(
        &self,
        authorization: Option<&[u8]>,
        certificate: Option<&[String]>,
    ) -> Result<Caller, Unauthenticated> {
        if let Some(value) = authorization {
            let token = bearer(value).ok_or(Unauthenticated::Malformed)?;
            return self.token(token).ok_or(Unauthenticated::UnknownToken);
        }
        match certificate {
            Some(subjects) => self
                .certificate(subjects)
                .ok_or_else(|| Unauthenticated::UnknownCertificate(subjects.join(", "))),
            None => Err(Unauthenticated::Missing),
        }
    }

    /// `caller` as this policy has it: the entry of the same name (a
    /// token's `name`, an identity's `subject`) that it authenticated
    /// with, with that entry's role and scope now; `None` once the entry
    /// is gone. For calls that outlive a reload.
    pub fn again(&self, caller: &Caller) -> Option<Caller> {
        match caller.how {
            How::Token => self
                .file
                .tokens
                .iter()
                .find(|t| t.name == caller.name)
                .map(token_caller),
            How::Certificate => self
                .file
                .identities
                .iter()
                .find(|id| id.subject == caller.name)
                .map(identity_caller),
        }
    }

    /// The caller a bearer token makes. Its hash is compared with every
    /// entry's, each comparison in constant time and without stopping at a
    /// match, so the time taken says nothing about which entry (or how much
    /// of a hash) matched.
    fn token(&self, token: &str) -> Option<Caller> {
        let hash = sha256(token);
        let mut found = u32::MAX;
        for (i, entry) in self.file.tokens.iter().enumerate() {
            let i = u32::try_from(i).unwrap_or(u32::MAX);
            found.conditional_assign(&i, entry.sha256.ct_eq(&hash));
        }
        let entry = self.file.tokens.get(usize::try_from(found).ok()?)?;
        Some(token_caller(entry))
    }

    /// The caller a certificate with `subjects` makes: the identity that
    /// names the first of them that any identity names.
    fn certificate(&self, subjects: &[String]) -> Option<Caller> {
        subjects.iter().find_map(|s| {
            let id = self.file.identities.iter().find(|id| &id.subject == s)?;
            Some(identity_caller(id))
        })
    }
}

/// The caller a `[[token]]` entry makes.
fn token_caller(entry: &TokenEntry) -> Caller {
    Caller {
        name: entry.name.clone(),
        role: entry.role,
        scope: entry.scope.clone(),
        how: How::Token,
    }
}

/// The caller an `[[identity]]` entry makes.
fn identity_caller(id: &IdentityEntry) -> Caller {
    Caller {
        name: id.subject.clone(),
        role: id.role,
        scope: id.scope.clone(),
        how: How::Certificate,
    }
}

/// The token of an `authorization: Bearer <token>` header value (the
/// scheme in any case, as RFC 9110 has it).
fn bearer(value: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// What the file held the last time it was looked at, so that polling
/// reports a change (or a problem) once, not every time.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    Contents(Vec<u8>),
    Unreadable(String),
}

/// The auth file in force, reloadable while the server runs. Requests take
/// the policy in force when they arrive ([`Auth::policy`]); a reload
/// changes what the next request gets, on every connection, without
/// closing any; watches already open check their caller again
/// ([`Auth::reloads`], [`Policy::again`]).
pub struct Auth {
    path: PathBuf,
    current: RwLock<Arc<Policy>>,
    seen: Mutex<Seen>,
    /// Counts the reloads that put a new policy in force, so that calls
    /// still running (open watches) can check their caller again.
    reloads: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("path", &self.path)
            .field("entries", &self.policy().file.len())
            .finish_non_exhaustive()
    }
}

impl Auth {
    /// Loads the auth file at `path`; an error is the start error.
    pub fn load(path: impl Into<PathBuf>) -> Result<Arc<Self>, AuthFileError> {
        let path = path.into();
        let text = read(&path)?;
        let file = AuthFile::parse_bytes(&path, &text)?;
        Ok(Arc::new(Self {
            path,
            current: RwLock::new(Arc::new(Policy::new(file))),
            seen: Mutex::new(Seen::Contents(text)),
            reloads: tokio::sync::watch::Sender::new(0),
        }))
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Changes each time a reload puts a new policy in force.
    pub fn reloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.reloads.subscribe()
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Reads the file again and puts it in force if it is valid, whether or
    /// not it changed (for SIGHUP). A file that cannot be read or is not
    /// valid leaves the one in force as it is; either way the outcome is
    /// logged (the entry count, never a secret) and returned, with the
    /// number of entries now in force on success.
    ///
    /// Reads the file with blocking I/O: it is small.
    pub fn reload_now(&self) -> Result<usize, AuthFileError> {
        self.reload(true).map(|n| n.unwrap_or_default())
    }

    /// Like [`Auth::reload_now`], but does nothing (and logs nothing) when
    /// the file holds what it held last time: `Ok(None)`.
    pub fn reload_if_changed(&self) -> Result<Option<usize>, AuthFileError> {
        self.reload(false)
    }

    fn reload(&self, force: bool) -> Result<Option<usize>, AuthFileError> {
        let text = read(&self.path);
        let now = match &text {
            Ok(t) => Seen::Contents(t.clone()),
            Err(e) => Seen::Unreadable(e.message.clone()),
        };
        {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            if !force && *seen == now {
                return Ok(None);
            }
            *seen = now;
        }
        let parsed = text.and_then(|t| AuthFile::parse_bytes(&self.path, &t));
        match parsed {
            Ok(file) => {
                let (tokens, identities) = (file.tokens.len(), file.identities.len());
                *self.current.write().unwrap_or_else(PoisonError::into_inner) =
                    Arc::new(Policy::new(file));
                self.reloads.send_modify(|n| *n += 1);
                tracing::info!(
                    path = %self.path.display(),
                    tokens,
                    identities,
                    "auth file loaded"
                );
                Ok(Some(tokens + identities))
            }
            Err(e) => {
                tracing::error!(
                    path = %self.path.display(),
                    error = %e,
                    "auth file not reloaded: keeping the one in force"
                );
                Err(e)
            }
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, AuthFileError> {
    std::fs::read(path).map_err(|e| AuthFileError {
        path: path.to_path_buf(),
        message: format!("cannot read it: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        let text = format!(
            "[[token]]\nname = \"reader\"\nsha256 = \"{}\"\nrole = \"read\"\n\
             [[token]]\nname = \"writer\"\nsha256 = \"{}\"\nrole = \"register\"\n\
             [[identity]]\nsubject = \"spiffe://example.org/agent\"\nrole = \"register\"\ngroups = [\"default\"]\n",
            hash_token("read-secret"),
            hash_token("write-secret"),
        );
        Policy::new(AuthFile::parse(&text).unwrap())
    }

    #[test]
    fn hash_token_is_sha256_hex() {
        assert_eq!(
            hash_token("test"),
            "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
        );
    }

    #[test]
    fn tokens_pick_their_entry() {
        let p = policy();
        let c = p.authenticate(Some(b"Bearer write-secret"), None).unwrap();
        assert_eq!(
            (c.name.as_str(), c.role, c.how),
            ("writer", Role::Register, How::Token)
        );
        let c = p.authenticate(Some(b"bearer read-secret"), None).unwrap();
        assert_eq!(c.name, "reader");
        assert_eq!(
            p.authenticate(Some(b"Bearer nope"), None),
            Err(Unauthenticated::UnknownToken)
        );
        assert_eq!(
            p.authenticate(Some(b"Basic read-secret"), None),
            Err(Unauthenticated::Malformed)
        );
        assert_eq!(p.authenticate(None, None), Err(Unauthenticated::Missing));
    }

    #[test]
    fn a_certificate_applies_without_a_token() {
        let p = policy();
        let subjects = vec![
            "spiffe://example.org/other".to_string(),
            "spiffe://example.org/agent".to_string(),
        ];
        let c = p.authenticate(None, Some(&subjects)).unwrap();
        assert_eq!(c.name, "spiffe://example.org/agent");
        assert_eq!(c.how, How::Certificate);
        assert_eq!(c.scope.groups, Some(vec!["default".to_string()]));
        // A token, when presented, decides: valid or not.
        let c = p
            .authenticate(Some(b"Bearer read-secret"), Some(&subjects))
            .unwrap();
        assert_eq!(c.name, "reader");
        assert_eq!(
            p.authenticate(Some(b"Bearer wrong"), Some(&subjects)),
            Err(Unauthenticated::UnknownToken)
        );
        let unknown = vec!["node1.example.org".to_string()];
        assert!(matches!(
            p.authenticate(None, Some(&unknown)),
            Err(Unauthenticated::UnknownCertificate(s)) if s == "node1.example.org"
        ));
    }

    #[test]
    fn messages_never_hold_the_token() {
        let p = policy();
        for header in [&b"Bearer s3cr3t-value"[..], b"Token s3cr3t-value"] {
            let e = p.authenticate(Some(header), None).unwrap_err();
            assert!(!e.to_string().contains("s3cr3t"), "{e}");
        }
    }

    #[test]
    fn reload_keeps_the_old_file_when_the_new_one_is_bad() {
        let dir = std::env::temp_dir().join(format!("discovered-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("auth.toml");
        let entry = |name: &str, token: &str| {
            format!(
                "[[token]]\nname = \"{name}\"\nsha256 = \"{}\"\nrole = \"read\"\n",
                hash_token(token)
            )
        };
        std::fs::write(&path, entry("a", "ta")).unwrap();
        let auth = Auth::load(&path).unwrap();
        assert_eq!(auth.reload_if_changed(), Ok(None));
        std::fs::write(&path, entry("b", "tb")).unwrap();
        assert_eq!(auth.reload_if_changed(), Ok(Some(1)));
        assert!(auth.policy().authenticate(Some(b"Bearer tb"), None).is_ok());
        std::fs::write(&path, "[[token]]\nname = \"c\"\n").unwrap();
        assert!(auth.reload_if_changed().is_err());
        // Reported once; still the previous file.
        assert_eq!(auth.reload_if_changed(), Ok(None));
        assert!(auth.policy().authenticate(Some(b"Bearer tb"), None).is_ok());
        assert!(auth.reload_now().is_err());
        std::fs::remove_file(&path).unwrap();
        assert!(
            auth.reload_if_changed()
                .unwrap_err()
                .message
                .starts_with("cannot read it")
        );
        assert!(auth.policy().authenticate(Some(b"Bearer tb"), None).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
