//! Who may see what: API key roles and the scope each one grants.
//!
//! A token is `pwk_<key id>_<secret>`. The key id finds the stored key; only a SHA-256 digest
//! of the secret is stored. Secrets are 256 random bits, so a fast digest is enough: there is
//! nothing to brute-force that a slow password hash would protect (as with GitHub's tokens).

use std::fmt;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::ids::{ChainId, ClinicId};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything, including registering chains and reading the quarantine.
    Admin,
    /// Its own lots and pens, wherever they are used.
    Manufacturer,
    /// Its own clinics.
    Chain,
    /// Itself.
    Clinic,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Admin, Role::Manufacturer, Role::Chain, Role::Clinic];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Manufacturer => "manufacturer",
            Role::Chain => "chain",
            Role::Clinic => "clinic",
        }
    }

    pub fn from_name(name: &str) -> Option<Role> {
        Self::ALL.into_iter().find(|role| role.as_str() == name)
    }
}

/// What a caller may see. Every query of the record is narrowed by one.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    All,
    Manufacturer(String),
    Chain(ChainId),
    Clinic(ClinicId),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScopeError {
    #[error("role {0} takes no scope")]
    Unexpected(&'static str),
    #[error("role {0} needs a scope (the {1} it may see)")]
    Missing(&'static str, &'static str),
    #[error("invalid scope {0:?}: {1}")]
    Invalid(String, String),
    #[error("unknown role {0:?}; known: admin, manufacturer, chain, clinic")]
    UnknownRole(String),
}

impl Scope {
    /// The scope a role grants over `scope` (a manufacturer, chain or clinic id).
    pub fn new(role: Role, scope: &str) -> Result<Scope, ScopeError> {
        let invalid = |e: crate::ids::InvalidId| ScopeError::Invalid(scope.to_owned(), e.to_string());
        match (role, scope.is_empty()) {
            (Role::Admin, true) => Ok(Scope::All),
            (Role::Admin, false) => Err(ScopeError::Unexpected("admin")),
            (Role::Manufacturer, true) => Err(ScopeError::Missing("manufacturer", "manufacturer id")),
            (Role::Chain, true) => Err(ScopeError::Missing("chain", "chain id")),
            (Role::Clinic, true) => Err(ScopeError::Missing("clinic", "clinic id")),
            (Role::Manufacturer, false) => {
                let valid = scope.len() <= 64 && scope.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
                if valid {
                    Ok(Scope::Manufacturer(scope.to_owned()))
                } else {
                    Err(ScopeError::Invalid(scope.to_owned(), "use at most 64 of A-Z a-z 0-9 - _ .".into()))
                }
            }
            (Role::Chain, false) => ChainId::parse(scope).map(Scope::Chain).map_err(invalid),
            (Role::Clinic, false) => ClinicId::parse(scope).map(Scope::Clinic).map_err(invalid),
        }
    }

    /// From stored names; unknown roles are an error, not a wider scope.
    pub fn from_stored(role: &str, scope: &str) -> Result<Scope, ScopeError> {
        let role = Role::from_name(role).ok_or_else(|| ScopeError::UnknownRole(role.to_owned()))?;
        Scope::new(role, scope)
    }

    pub fn role(&self) -> Role {
        match self {
            Scope::All => Role::Admin,
            Scope::Manufacturer(_) => Role::Manufacturer,
            Scope::Chain(_) => Role::Chain,
            Scope::Clinic(_) => Role::Clinic,
        }
    }

    /// The id the scope is bounded by, empty for admin.
    pub fn id(&self) -> &str {
        match self {
            Scope::All => "",
            Scope::Manufacturer(id) => id,
            Scope::Chain(id) => id.as_str(),
            Scope::Clinic(id) => id.as_str(),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::All => f.write_str("admin"),
            other => write!(f, "{} {}", other.role().as_str(), other.id()),
        }
    }
}

const TOKEN_PREFIX: &str = "pwk_";

/// A presented token, split into the key id (to find the stored key) and the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken<'a> {
    pub key_id: &'a str,
    pub secret: &'a str,
}

impl<'a> ApiToken<'a> {
    pub fn parse(token: &'a str) -> Option<ApiToken<'a>> {
        let (key_id, secret) = token.strip_prefix(TOKEN_PREFIX)?.split_once('_')?;
        let well_formed = |part: &str| !part.is_empty() && part.bytes().all(|b| b.is_ascii_hexdigit());
        (well_formed(key_id) && well_formed(secret)).then_some(ApiToken { key_id, secret })
    }

    /// The token text for a key id and secret (both lowercase hex).
    pub fn format(key_id: &str, secret: &str) -> String {
        format!("{TOKEN_PREFIX}{key_id}_{secret}")
    }
}

/// The digest stored for a secret, as lowercase hex.
pub fn secret_digest(secret: &str) -> String {
    Sha256::digest(secret.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `secret` matches a stored digest, in time independent of where they differ.
pub fn secret_matches(secret: &str, stored_digest: &str) -> bool {
    secret_digest(secret).as_bytes().ct_eq(stored_digest.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_roles() {
        assert_eq!(Scope::new(Role::Admin, ""), Ok(Scope::All));
        assert!(Scope::new(Role::Admin, "chain-1").is_err());
        assert!(matches!(Scope::new(Role::Chain, "chain-1"), Ok(Scope::Chain(c)) if c.as_str() == "chain-1"));
        assert_eq!(Scope::new(Role::Chain, ""), Err(ScopeError::Missing("chain", "chain id")));
        assert!(Scope::new(Role::Manufacturer, "acme medical").is_err());
        assert_eq!(Scope::from_stored("clinic", "c-1").unwrap().to_string(), "clinic c-1");
        assert!(Scope::from_stored("root", "").is_err(), "an unknown stored role grants nothing");
    }

    #[test]
    fn tokens_parse_and_verify() {
        let token = ApiToken::format("0a1b", "deadbeef");
        assert_eq!(ApiToken::parse(&token), Some(ApiToken { key_id: "0a1b", secret: "deadbeef" }));
        for bad in ["", "pwk_", "pwk_0a1b", "pwk__dead", "xyz_0a1b_dead", "pwk_0a1b_zz", "pwk_0a1b_dead_beef"] {
            assert_eq!(ApiToken::parse(bad), None, "{bad:?}");
        }
        let digest = secret_digest("deadbeef");
        assert_eq!(digest.len(), 64);
        assert!(secret_matches("deadbeef", &digest));
        assert!(!secret_matches("deadbeee", &digest));
        assert!(!secret_matches("deadbeef", ""));
    }
}
