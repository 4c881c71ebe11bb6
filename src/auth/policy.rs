//! Roles, scopes and what they allow: the decision, without any transport.
//!
//! A [`Caller`] is who a request was authenticated as; [`Caller::authorize`]
//! says whether it may make one [`Action`] on one group (and service). The
//! handlers call it once they have decoded the group and service a request
//! names, so a scope is checked against the names the call really touches
//! (the server's default group filled in).

use std::fmt;

/// What a caller may do, from least to most: each role allows everything
/// the ones before it do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Role {
    /// Look services and nodes up, list and watch them.
    Read,
    /// Also register services and nodes, heartbeat and remove nodes.
    Register,
    /// Everything: also remove services and groups, and read credentials.
    Admin,
}

impl Role {
    /// The role's name in the auth file: `read`, `register` or `admin`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Register => "register",
            Role::Admin => "admin",
        }
    }

    /// The role named `s` in the auth file, if any.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "read" => Some(Role::Read),
            "register" => Some(Role::Register),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What part of the registry an entry may touch. `None` means all: all
/// groups, or all services of the groups it may touch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// The groups it covers; `None` for every group.
    pub groups: Option<Vec<String>>,
    /// The services it covers (in each of its groups); `None` for every
    /// service.
    pub services: Option<Vec<String>>,
}

impl Scope {
    /// Whether the scope covers `group`.
    pub fn covers_group(&self, group: &str) -> bool {
        self.groups
            .as_ref()
            .is_none_or(|gs| gs.iter().any(|g| g == group))
    }

    /// Whether the scope covers service `service` (of a group it covers).
    pub fn covers_service(&self, service: &str) -> bool {
        self.services
            .as_ref()
            .is_none_or(|ss| ss.iter().any(|s| s == service))
    }

    /// Whether the scope covers every service of `group`, including those
    /// not registered yet: a whole-group call (a group watch, removing the
    /// group) needs this.
    pub fn covers_whole_group(&self, group: &str) -> bool {
        self.covers_group(group) && self.services.is_none()
    }

    /// Whether the scope is everything (no `groups`, no `services`).
    pub fn is_everything(&self) -> bool {
        self.groups.is_none() && self.services.is_none()
    }
}

/// One thing a request does that the policy decides on: a Discovery RPC,
/// revealing credentials, or using reflection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// `RegisterService`.
    RegisterService,
    /// `RegisterNode`.
    RegisterNode,
    /// `Heartbeat`.
    Heartbeat,
    /// `RemoveNode`.
    RemoveNode,
    /// `GetService` without credentials.
    GetService,
    /// `GetService` with `reveal_credentials = true`.
    RevealCredentials,
    /// `GetNodes`.
    GetNodes,
    /// `ListServices`.
    ListServices,
    /// `ListServiceGroups`.
    ListServiceGroups,
    /// `WatchService`, of one service or of a whole group.
    WatchService,
    /// `RemoveService`.
    RemoveService,
    /// `RemoveServiceGroup`.
    RemoveServiceGroup,
}

impl Action {
    /// The least role that may do this.
    pub fn needs(self) -> Role {
        match self {
            Action::GetService
            | Action::GetNodes
            | Action::ListServices
            | Action::ListServiceGroups
            | Action::WatchService => Role::Read,
            Action::RegisterService
            | Action::RegisterNode
            | Action::Heartbeat
            | Action::RemoveNode => Role::Register,
            Action::RevealCredentials | Action::RemoveService | Action::RemoveServiceGroup => {
                Role::Admin
            }
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::RegisterService => "RegisterService",
            Action::RegisterNode => "RegisterNode",
            Action::Heartbeat => "Heartbeat",
            Action::RemoveNode => "RemoveNode",
            Action::GetService => "GetService",
            Action::RevealCredentials => "GetService with reveal_credentials",
            Action::GetNodes => "GetNodes",
            Action::ListServices => "ListServices",
            Action::ListServiceGroups => "ListServiceGroups",
            Action::WatchService => "WatchService",
            Action::RemoveService => "RemoveService",
            Action::RemoveServiceGroup => "RemoveServiceGroup",
        })
    }
}

/// How a caller proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum How {
    /// A bearer token of a `[[token]]` entry.
    Token,
    /// A verified client certificate whose subject an `[[identity]]` names.
    Certificate,
}

/// Who a request was authenticated as, in the request's extensions when the
/// server runs with an auth file. Never holds a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The entry's `name` (a token) or `subject` (a certificate identity):
    /// what logs and audit lines show.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// Where it may do it.
    pub scope: Scope,
    /// How it authenticated.
    pub how: How,
}

impl Caller {
    /// The caller as the store sees a writer of nodes: its name, and
    /// whether it may change nodes that others registered.
    pub fn actor(&self) -> crate::model::Actor {
        crate::model::Actor {
            name: self.name.clone(),
            admin: self.role == Role::Admin,
        }
    }
}

/// Why a caller may not do something: PERMISSION_DENIED, with this as the
/// message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{caller:?} (role {role}) may not {action}: {why}")]
pub struct Denied {
    /// The caller's name.
    pub caller: String,
    /// The caller's role.
    pub role: Role,
    /// What it tried.
    pub action: Action,
    /// The missing permission.
    pub why: String,
}

impl Caller {
    /// Whether the caller may do `action` on `group` and, for a call about
    /// one service, `service`; `None` means the call covers the whole group
    /// (a group watch, removing a group), which needs a scope without a
    /// `services` restriction.
    ///
    /// `ListServices` passes `None` but is allowed with a `services`
    /// restriction: its answer is filtered to the scope instead (see
    /// [`Caller::lists`]). `ListServiceGroups` is not checked here at all
    /// beyond the role (its answer is filtered the same way).
    pub fn authorize(
        &self,
        action: Action,
        group: &str,
        service: Option<&str>,
    ) -> Result<(), Denied> {
        let deny = |why: String| Denied {
            caller: self.name.clone(),
            role: self.role,
            action,
            why,
        };
        let needs = action.needs();
        if self.role < needs {
            return Err(deny(format!("needs role {needs}")));
        }
        if action == Action::ListServiceGroups {
            return Ok(());
        }
        if !self.scope.covers_group(group) {
            return Err(deny(format!("scope does not include group {group:?}")));
        }
        match service {
            Some(s) if !self.scope.covers_service(s) => Err(deny(format!(
                "scope does not include service {s:?} of group {group:?}"
            ))),
            Some(_) => Ok(()),
            None if action == Action::ListServices => Ok(()),
            None if self.scope.services.is_some() => Err(deny(format!(
                "scope does not include every service of group {group:?} (only {})",
                quoted_list(self.scope.services.as_deref().unwrap_or_default())
            ))),
            None => Ok(()),
        }
    }

    /// Whether a listing should show `name`: a group for
    /// `ListServiceGroups` (`group` = `None`), or a service of `group` for
    /// `ListServices`. Listings answer only what the scope covers.
    pub fn lists(&self, group: Option<&str>, name: &str) -> bool {
        match group {
            None => self.scope.covers_group(name),
            Some(g) => self.scope.covers_group(g) && self.scope.covers_service(name),
        }
    }
}

fn quoted_list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("{n:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(role: Role, groups: Option<&[&str]>, services: Option<&[&str]>) -> Caller {
        let owned = |l: &[&str]| l.iter().map(|s| s.to_string()).collect();
        Caller {
            name: "payments-agent".into(),
            role,
            scope: Scope {
                groups: groups.map(owned),
                services: services.map(owned),
            },
            how: How::Token,
        }
    }

    #[test]
    fn a_lower_role_is_told_which_role_it_needs() {
        let c = caller(Role::Read, None, None);
        let e = c
            .authorize(Action::RegisterNode, "default", Some("payments"))
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            r#""payments-agent" (role read) may not RegisterNode: needs role register"#
        );
        assert!(c.authorize(Action::GetNodes, "default", Some("x")).is_ok());
    }

    #[test]
    fn roles_include_the_ones_below() {
        let admin = caller(Role::Admin, None, None);
        for a in [
            Action::GetService,
            Action::RegisterNode,
            Action::RemoveServiceGroup,
            Action::RevealCredentials,
        ] {
            assert!(admin.authorize(a, "g", Some("s")).is_ok(), "{a}");
        }
        let register = caller(Role::Register, None, None);
        assert!(
            register
                .authorize(Action::Heartbeat, "g", Some("s"))
                .is_ok()
        );
        assert!(
            register
                .authorize(Action::RevealCredentials, "g", Some("s"))
                .is_err()
        );
    }

    #[test]
    fn scopes_name_what_is_outside_them() {
        let c = caller(Role::Register, Some(&["default"]), Some(&["payments"]));
        assert!(
            c.authorize(Action::RegisterNode, "default", Some("payments"))
                .is_ok()
        );
        let e = c
            .authorize(Action::RegisterNode, "default", Some("orders"))
            .unwrap_err();
        assert!(
            e.to_string()
                .ends_with(r#"scope does not include service "orders" of group "default""#),
            "{e}"
        );
        let e = c
            .authorize(Action::RegisterNode, "other", Some("payments"))
            .unwrap_err();
        assert!(
            e.to_string()
                .ends_with(r#"scope does not include group "other""#),
            "{e}"
        );
        // A whole-group watch would show services outside the scope.
        let e = c
            .authorize(Action::WatchService, "default", None)
            .unwrap_err();
        assert!(e.to_string().contains("every service"), "{e}");
        // A listing is filtered instead.
        assert!(c.authorize(Action::ListServices, "default", None).is_ok());
        assert!(c.lists(Some("default"), "payments"));
        assert!(!c.lists(Some("default"), "orders"));
        assert!(c.lists(None, "default"));
        assert!(!c.lists(None, "other"));
    }
}
