//! The auth file (`--auth-file`): TOML, read strictly.
//!
//! ```toml
//! [[token]]
//! name = "payments-agent"       # shown in logs, never the secret
//! sha256 = "<64 hex digits>"    # SHA-256 of the token; the token is not stored
//! role = "register"             # read | register | admin
//! groups = ["default"]          # optional; all groups when absent
//! services = ["payments"]       # optional; all services when absent
//!
//! [[identity]]                  # a verified client certificate's subject
//! subject = "spiffe://example.org/agent"
//! role = "read"
//! ```
//!
//! Anything else is an error naming the file, the entry and the field: an
//! unknown key (a misspelt `grups` would otherwise widen a scope to every
//! group), an unknown role, a hash that is not 64 hex digits, a name,
//! hash or subject given twice, an empty list. A file without any entry is
//! an error too: it would refuse every call, and it is what a reload sees
//! when it reads a file an editor has just truncated.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::policy::{Role, Scope};
use crate::model::validate_name;

/// One `[[token]]` entry.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenEntry {
    /// What logs show for it.
    pub name: String,
    /// SHA-256 of the token.
    pub sha256: [u8; 32],
    /// What it may do.
    pub role: Role,
    /// Where it may do it.
    pub scope: Scope,
}

// By hand, so that not even the hash reaches a log.
impl fmt::Debug for TokenEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenEntry")
            .field("name", &self.name)
            .field("role", &self.role)
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// One `[[identity]]` entry: a client certificate subject (a SAN URI such
/// as a SPIFFE id, or a SAN DNS name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityEntry {
    /// The subject, compared exactly.
    pub subject: String,
    /// What it may do.
    pub role: Role,
    /// Where it may do it.
    pub scope: Scope,
}

/// A parsed, valid auth file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthFile {
    /// The `[[token]]` entries, in file order.
    pub tokens: Vec<TokenEntry>,
    /// The `[[identity]]` entries, in file order.
    pub identities: Vec<IdentityEntry>,
}

/// Why an auth file cannot be used: one line naming the file and, where
/// there is one, the entry and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("auth file {}: {message}", path.display())]
pub struct AuthFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong with it.
    pub message: String,
}

impl AuthFile {
    /// Reads and parses the file at `path`.
    pub fn load(path: &Path) -> Result<Self, AuthFileError> {
        let text = std::fs::read(path).map_err(|e| AuthFileError {
            path: path.to_path_buf(),
            message: format!("cannot read it: {e}"),
        })?;
        Self::parse_bytes(path, &text)
    }

    /// Parses the contents `text` of the file at `path` (named in errors).
    pub fn parse_bytes(path: &Path, text: &[u8]) -> Result<Self, AuthFileError> {
        let fail = |message: String| AuthFileError {
            path: path.to_path_buf(),
            message,
        };
        let text = std::str::from_utf8(text).map_err(|_| fail("not UTF-8 text".into()))?;
        Self::parse(text).map_err(fail)
    }

    /// Parses auth-file TOML; the error is the message without the file.
    pub fn parse(text: &str) -> Result<Self, String> {
        let table: Table = toml::from_str(text).map_err(|e| toml_error(text, &e))?;
        let mut file = AuthFile::default();
        for (key, value) in &table {
            let entries = match value {
                Value::Array(a) => a,
                _ => {
                    return Err(format!(
                        "{key}: expected [[{key}]] entries, got {}",
                        value.type_str()
                    ));
                }
            };
            match key.as_str() {
                "token" => {
                    for (i, v) in entries.iter().enumerate() {
                        file.tokens.push(token(i + 1, v)?);
                    }
                }
                "identity" => {
                    for (i, v) in entries.iter().enumerate() {
                        file.identities.push(identity(i + 1, v)?);
                    }
                }
                other => {
                    return Err(format!(
                        "unknown key {other:?} (expected [[token]] or [[identity]] entries)"
                    ));
                }
            }
        }
        if file.tokens.is_empty() && file.identities.is_empty() {
            return Err("no [[token]] or [[identity]] entries: every call would be refused".into());
        }
        file.check_unique()?;
        Ok(file)
    }

    fn check_unique(&self) -> Result<(), String> {
        let mut names = HashSet::new();
        let mut hashes = HashSet::new();
        for (i, t) in self.tokens.iter().enumerate() {
            let at = format!("token {} ({:?})", i + 1, t.name);
            if !names.insert(&t.name) {
                return Err(format!(
                    "{at}: name: {:?} is used by an earlier token",
                    t.name
                ));
            }
            if !hashes.insert(t.sha256) {
                // Two entries for one token: which role would apply?
                return Err(format!(
                    "{at}: sha256: the same hash as an earlier token (one token, two entries)"
                ));
            }
        }
        let mut subjects = HashSet::new();
        for (i, id) in self.identities.iter().enumerate() {
            if !subjects.insert(&id.subject) {
                return Err(format!(
                    "identity {} ({:?}): subject: given by an earlier identity",
                    i + 1,
                    id.subject
                ));
            }
        }
        Ok(())
    }

    /// How many entries the file has (tokens and identities).
    pub fn len(&self) -> usize {
        self.tokens.len() + self.identities.len()
    }

    /// Whether the file has no entry (never true of a parsed file).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A TOML syntax error as one line: toml's own message spans several
/// (with a snippet of the file), which a start error must not.
fn toml_error(text: &str, e: &toml::de::Error) -> String {
    let what = e.message().trim().replace('\n', " ");
    match e.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            format!("line {line}: {what}")
        }
        None => what,
    }
}

/// The fields every entry has besides its key.
const ROLE: &str = "role";
const GROUPS: &str = "groups";
const SERVICES: &str = "services";

fn token(n: usize, value: &Value) -> Result<TokenEntry, String> {
    let table = value.as_table().ok_or_else(|| {
        format!(
            "token {n}: expected a table ([[token]]), got {}",
            value.type_str()
        )
    })?;
    // Name the entry by its name once there is one to name it by.
    let at = match table.get("name").and_then(Value::as_str) {
        Some(name) => format!("token {n} ({name:?})"),
        None => format!("token {n}"),
    };
    check_keys(&at, table, &["name", "sha256", ROLE, GROUPS, SERVICES])?;
    let name = required_str(&at, table, "name")?;
    if name.trim().is_empty() || name.len() > 128 || name.chars().any(char::is_control) {
        return Err(format!("{at}: name: must be 1 to 128 printable characters"));
    }
    let hex = required_str(&at, table, "sha256")?;
    let sha256 = parse_sha256(hex).map_err(|why| format!("{at}: sha256: {why}"))?;
    let (role, scope) = grant(&at, table)?;
    Ok(TokenEntry {
        name: name.to_string(),
        sha256,
        role,
        scope,
    })
}

fn identity(n: usize, value: &Value) -> Result<IdentityEntry, String> {
    let table = value.as_table().ok_or_else(|| {
        format!(
            "identity {n}: expected a table ([[identity]]), got {}",
            value.type_str()
        )
    })?;
    let at = match table.get("subject").and_then(Value::as_str) {
        Some(s) => format!("identity {n} ({s:?})"),
        None => format!("identity {n}"),
    };
    check_keys(&at, table, &["subject", ROLE, GROUPS, SERVICES])?;
    let subject = required_str(&at, table, "subject")?;
    if subject.is_empty() || subject.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "{at}: subject: must be a certificate's SAN URI or DNS name (no spaces)"
        ));
    }
    let (role, scope) = grant(&at, table)?;
    Ok(IdentityEntry {
        subject: subject.to_string(),
        role,
        scope,
    })
}

fn check_keys(at: &str, table: &Table, known: &[&str]) -> Result<(), String> {
    for key in table.keys() {
        if !known.contains(&key.as_str()) {
            return Err(format!(
                "{at}: unknown field {key:?} (expected one of {})",
                known.join(", ")
            ));
        }
    }
    Ok(())
}

fn required_str<'t>(at: &str, table: &'t Table, field: &str) -> Result<&'t str, String> {
    match table.get(field) {
        None => Err(format!("{at}: {field}: missing")),
        Some(Value::String(s)) => Ok(s),
        Some(v) => Err(format!(
            "{at}: {field}: expected a string, got {}",
            v.type_str()
        )),
    }
}

/// The role and scope of an entry.
fn grant(at: &str, table: &Table) -> Result<(Role, Scope), String> {
    let role = required_str(at, table, ROLE)?;
    let role = Role::parse(role).ok_or_else(|| {
        format!("{at}: role: {role:?} is not a role (expected read, register or admin)")
    })?;
    let scope = Scope {
        groups: names(at, table, GROUPS)?,
        services: names(at, table, SERVICES)?,
    };
    Ok((role, scope))
}

/// An optional list of group or service names.
fn names(at: &str, table: &Table, field: &str) -> Result<Option<Vec<String>>, String> {
    let Some(value) = table.get(field) else {
        return Ok(None);
    };
    let Value::Array(items) = value else {
        return Err(format!(
            "{at}: {field}: expected a list of names, got {}",
            value.type_str()
        ));
    };
    if items.is_empty() {
        // An empty list would allow nothing; leaving it out allows all.
        // Either is more likely meant than what the other would do.
        return Err(format!(
            "{at}: {field}: empty list (leave {field} out to allow all {field})"
        ));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let Value::String(s) = item else {
            return Err(format!(
                "{at}: {field}: expected names (strings), got {}",
                item.type_str()
            ));
        };
        validate_name(field, s).map_err(|e| format!("{at}: {e}"))?;
        out.push(s.clone());
    }
    Ok(Some(out))
}

/// 64 hex digits (either case) as 32 bytes.
fn parse_sha256(hex: &str) -> Result<[u8; 32], String> {
    if hex.len() != 64 {
        return Err(format!(
            "must be 64 hex digits (the SHA-256 of the token), got {} characters",
            hex.chars().count()
        ));
    }
    let mut out = [0u8; 32];
    for (i, pair) in hex.as_bytes().chunks(2).enumerate() {
        let digit = |c: u8| (c as char).to_digit(16);
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => out[i] = (h * 16 + l) as u8,
            _ => return Err("must be 64 hex digits (0-9, a-f)".into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    const HASH2: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

    fn err(text: &str) -> String {
        AuthFile::parse(text).unwrap_err()
    }

    #[test]
    fn a_full_file_parses() {
        let f = AuthFile::parse(&format!(
            r#"
[[token]]
name = "payments-agent"
sha256 = "{HASH}"
role = "register"
groups = ["default"]
services = ["payments"]

[[token]]
name = "ops"
sha256 = "{}"
role = "admin"

[[identity]]
subject = "spiffe://example.org/agent"
role = "read"
groups = ["default"]
"#,
            HASH2.to_uppercase()
        ))
        .unwrap();
        assert_eq!(f.tokens.len(), 2);
        assert_eq!(f.tokens[0].role, Role::Register);
        assert_eq!(f.tokens[0].scope.services, Some(vec!["payments".into()]));
        assert_eq!(f.tokens[1].scope, Scope::default());
        assert_eq!(f.tokens[0].sha256[0], 0x9f);
        assert_eq!(f.identities[0].subject, "spiffe://example.org/agent");
        assert!(!format!("{:?}", f).contains("9f86"), "Debug shows no hash");
    }

    #[test]
    fn mistakes_name_entry_and_field() {
        let t = |extra: &str| {
            format!("[[token]]\nname = \"a\"\nsha256 = \"{HASH}\"\nrole = \"read\"\n{extra}")
        };
        assert_eq!(
            err(&t("grups = [\"x\"]")),
            r#"token 1 ("a"): unknown field "grups" (expected one of name, sha256, role, groups, services)"#
        );
        assert_eq!(
            err(&format!(
                "[[token]]\nname = \"a\"\nsha256 = \"{HASH}\"\nrole = \"root\""
            )),
            r#"token 1 ("a"): role: "root" is not a role (expected read, register or admin)"#
        );
        assert!(
            err("[[token]]\nname = \"a\"\nsha256 = \"abc\"\nrole = \"read\"")
                .starts_with(r#"token 1 ("a"): sha256: must be 64 hex digits"#)
        );
        let not_hex = "z".repeat(64);
        assert!(
            err(&format!(
                "[[token]]\nname = \"a\"\nsha256 = \"{not_hex}\"\nrole = \"read\""
            ))
            .contains("hex")
        );
        assert_eq!(
            err(&t("groups = []")),
            r#"token 1 ("a"): groups: empty list (leave groups out to allow all groups)"#
        );
        assert!(err(&t("services = [\"no spaces\"]")).starts_with(r#"token 1 ("a"): services"#));
        assert_eq!(
            err("[[token]]\nname = \"a\"\nrole = \"read\""),
            r#"token 1 ("a"): sha256: missing"#
        );
        assert_eq!(err("[[token]]\nsha256 = \"x\""), "token 1: name: missing");
        assert_eq!(
            err("[[tokens]]\nname = \"a\""),
            r#"unknown key "tokens" (expected [[token]] or [[identity]] entries)"#
        );
        assert!(err("").starts_with("no [[token]] or [[identity]] entries"));
        assert!(
            err("[[token]\n").starts_with("line 1: "),
            "{}",
            err("[[token]\n")
        );
        assert!(!err("[[token]\nname = \"a\"\n\n[x").contains('\n'));
        assert!(
            err("[[identity]]\nsubject = \"spiffe://x\"\nrole = \"read\"\nname = \"n\"")
                .starts_with(r#"identity 1 ("spiffe://x"): unknown field "name""#)
        );
    }

    #[test]
    fn names_hashes_and_subjects_are_unique() {
        let two = |n1: &str, h1: &str, n2: &str, h2: &str| {
            format!(
                "[[token]]\nname = \"{n1}\"\nsha256 = \"{h1}\"\nrole = \"read\"\n\
                 [[token]]\nname = \"{n2}\"\nsha256 = \"{h2}\"\nrole = \"read\"\n"
            )
        };
        assert!(AuthFile::parse(&two("a", HASH, "b", HASH2)).is_ok());
        assert_eq!(
            err(&two("a", HASH, "a", HASH2)),
            r#"token 2 ("a"): name: "a" is used by an earlier token"#
        );
        assert!(
            err(&two("a", HASH, "b", &HASH.to_uppercase()))
                .starts_with(r#"token 2 ("b"): sha256: the same hash"#)
        );
        let id = "[[identity]]\nsubject = \"spiffe://x\"\nrole = \"read\"\n";
        assert!(err(&format!("{id}{id}")).starts_with(r#"identity 2 ("spiffe://x"): subject"#));
    }

    #[test]
    fn errors_name_the_file() {
        let e = AuthFile::parse_bytes(Path::new("/etc/discovered/auth.toml"), b"").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("auth file /etc/discovered/auth.toml: no [[token]]"),
            "{e}"
        );
    }
}
