//! Who is calling: the authenticated principal and what its token allows (§2.4–§3).
//!
//! The auth layer builds an [`AuthContext`] per request; validation and handlers only
//! read it. In `none` mode every request runs as one fixed service principal with
//! every permission (§2.6).

/// The three canonical principal types. Token aliases (`svc`, `org`) are folded into
/// `Service` at parse time so every later comparison uses canonical names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PrincipalType {
    User,
    Agent,
    Service,
}

impl PrincipalType {
    /// Canonical name, as rendered in `actor`, `creator_principal.type` and
    /// `starcite_principal.principal_type`.
    pub fn as_str(self) -> &'static str {
        match self {
            PrincipalType::User => "user",
            PrincipalType::Agent => "agent",
            PrincipalType::Service => "service",
        }
    }

    /// Parses the type part of a JWT `sub` (§2.4): canonical names plus the aliases
    /// `svc` and `org` (both `service`). Case-sensitive, like the reference.
    pub fn from_sub_type(s: &str) -> Option<Self> {
        match s {
            "user" => Some(PrincipalType::User),
            "agent" => Some(PrincipalType::Agent),
            "service" | "svc" | "org" => Some(PrincipalType::Service),
            _ => None,
        }
    }
}

/// An authenticated identity: `(tenant_id, id, type)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant_id: String,
    pub id: String,
    pub kind: PrincipalType,
}

impl Principal {
    /// Canonical actor `"<type>:<id>"`; the only `actor` an append may carry (§6.4).
    pub fn actor(&self) -> String {
        format!("{}:{}", self.kind.as_str(), self.id)
    }
}

/// Everything authorization needs to know about a request's credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthContext {
    pub principal: Principal,
    /// `session_id` claim: the token may only touch this one session (§3).
    pub session_lock: Option<String>,
    pub scopes: Vec<String>,
    /// `STARCITE_AUTH_MODE=none`: every scope/lock/tenant check passes.
    pub none_mode: bool,
}

/// The identity every request has in `none` mode (§2.6).
const NONE_MODE_ID: &str = "service";

impl AuthContext {
    /// The fixed none-mode context: principal `service:service` of tenant `service`,
    /// no lock, no scopes (none are checked).
    pub fn none() -> Self {
        AuthContext {
            principal: Principal {
                tenant_id: NONE_MODE_ID.to_string(),
                id: NONE_MODE_ID.to_string(),
                kind: PrincipalType::Service,
            },
            session_lock: None,
            scopes: Vec::new(),
            none_mode: true,
        }
    }

    /// Whether the token carries `scope` (exact, case-sensitive). None mode allows all.
    pub fn allows(&self, scope: &str) -> bool {
        self.none_mode || self.scopes.iter().any(|s| s == scope)
    }

    /// Whether the session lock (if any) admits `session_id` (§3 "Session lock").
    pub fn lock_allows(&self, session_id: &str) -> bool {
        self.none_mode || !matches!(self.session_lock.as_deref(), Some(lock) if lock != session_id)
    }
}

/// Scope names of §3, so handlers never spell them by hand.
pub mod scope {
    pub const CREATE: &str = "session:create";
    pub const READ: &str = "session:read";
    pub const APPEND: &str = "session:append";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(scopes: &[&str], lock: Option<&str>) -> AuthContext {
        AuthContext {
            principal: Principal {
                tenant_id: "acme".into(),
                id: "u-42".into(),
                kind: PrincipalType::User,
            },
            session_lock: lock.map(str::to_string),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            none_mode: false,
        }
    }

    #[test]
    fn canonical_names_and_aliases() {
        let table = [
            ("user", Some(PrincipalType::User)),
            ("agent", Some(PrincipalType::Agent)),
            ("service", Some(PrincipalType::Service)),
            ("svc", Some(PrincipalType::Service)),
            ("org", Some(PrincipalType::Service)),
            ("User", None),
            ("", None),
            ("bot", None),
        ];
        for (input, want) in table {
            assert_eq!(PrincipalType::from_sub_type(input), want, "{input:?}");
        }
        assert_eq!(PrincipalType::User.as_str(), "user");
        assert_eq!(PrincipalType::Agent.as_str(), "agent");
        assert_eq!(PrincipalType::Service.as_str(), "service");
    }

    #[test]
    fn actor_uses_canonical_type_and_keeps_colons_in_id() {
        let p = Principal {
            tenant_id: "t".into(),
            id: "billing:eu".into(),
            kind: PrincipalType::Service,
        };
        assert_eq!(p.actor(), "service:billing:eu");
    }

    #[test]
    fn none_mode_is_the_fixed_service_principal() {
        let ctx = AuthContext::none();
        assert_eq!(ctx.principal.tenant_id, "service");
        assert_eq!(ctx.principal.id, "service");
        assert_eq!(ctx.principal.kind, PrincipalType::Service);
        assert_eq!(ctx.principal.actor(), "service:service");
        assert_eq!(ctx.session_lock, None);
        assert!(ctx.none_mode);
        assert!(ctx.allows(scope::CREATE) && ctx.allows("anything"));
        assert!(ctx.lock_allows("any-session"));
    }

    #[test]
    fn scopes_are_exact_and_case_sensitive() {
        let ctx = jwt(&[scope::READ], None);
        assert!(ctx.allows("session:read"));
        assert!(!ctx.allows("session:READ"));
        assert!(!ctx.allows("session:append"));
        assert!(!ctx.allows("session"));
    }

    #[test]
    fn session_lock_admits_only_its_session() {
        assert!(jwt(&[], None).lock_allows("s1"));
        let locked = jwt(&[], Some("s1"));
        assert!(locked.lock_allows("s1"));
        assert!(!locked.lock_allows("s2"));
    }
}
