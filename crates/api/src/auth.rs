//! Authentication: every RPC starts by turning its bearer token into the caller's scope.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use penwarden_domain::access::{secret_matches, ApiToken, Scope};
use penwarden_store::Store;
use tonic::{Request, Status};

/// How long a verified key is trusted without asking the store again: a revoked key stops
/// working within this time.
const CACHE_TTL: Duration = Duration::from_secs(5);
const CACHE_MAX_ENTRIES: usize = 10_000;

pub(crate) struct Authenticator {
    store: Store,
    /// Verified tokens (by their full text) and the scope they grant.
    cache: Mutex<HashMap<String, (Scope, Instant)>>,
}

impl Authenticator {
    pub(crate) fn new(store: Store) -> Authenticator {
        Authenticator { store, cache: Mutex::new(HashMap::new()) }
    }

    /// The scope of the request's API key, or UNAUTHENTICATED. One message for every kind of
    /// failure, so a caller learns nothing about which keys exist.
    pub(crate) async fn scope<T>(&self, request: &Request<T>) -> Result<Scope, Status> {
        let token = bearer_token(request)?;
        if let Some(scope) = self.cached(token) {
            return Ok(scope);
        }
        let rejected = || Status::unauthenticated("invalid or revoked API key");
        let parsed = ApiToken::parse(token).ok_or_else(rejected)?;
        let stored = self.store.api_key(parsed.key_id).await.map_err(crate::status::from_store)?;
        let stored = stored.filter(|key| key.revoked_ms.is_none()).ok_or_else(rejected)?;
        if !secret_matches(parsed.secret, &stored.secret_digest) {
            return Err(rejected());
        }
        let scope = Scope::from_stored(&stored.role, &stored.scope).map_err(|error| {
            tracing::error!(key_id = %stored.key_id, %error, "stored API key has an invalid role or scope");
            rejected()
        })?;
        let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if cache.len() >= CACHE_MAX_ENTRIES {
            cache.clear();
        }
        cache.insert(token.to_owned(), (scope.clone(), Instant::now()));
        Ok(scope)
    }

    fn cached(&self, token: &str) -> Option<Scope> {
        let cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.get(token).filter(|(_, at)| at.elapsed() < CACHE_TTL).map(|(scope, _)| scope.clone())
    }
}

fn bearer_token<T>(request: &Request<T>) -> Result<&str, Status> {
    let header = request
        .metadata()
        .get("authorization")
        .ok_or_else(|| Status::unauthenticated("an API key is required: send `authorization: Bearer <token>`"))?;
    header
        .to_str()
        .ok()
        .and_then(|value| value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| Status::unauthenticated("the authorization header must be `Bearer <token>`"))
}

/// The key id of the request's token, if it has the form of one (never the secret).
pub(crate) fn key_id<T>(request: &Request<T>) -> Option<String> {
    let token = bearer_token(request).ok()?;
    ApiToken::parse(token).map(|token| token.key_id.to_owned())
}

/// PERMISSION_DENIED unless the caller is an admin.
pub(crate) fn require_admin(scope: &Scope, what: &str) -> Result<(), Status> {
    match scope {
        Scope::All => Ok(()),
        other => Err(Status::permission_denied(format!("{what} needs an admin key; this key is {other}"))),
    }
}

/// Checks request filters naming a chain or clinic against the caller's scope: naming one
/// outside it is PERMISSION_DENIED, whether or not it exists, so nothing can be inferred.
pub(crate) async fn check_place_filters(
    store: &Store,
    scope: &Scope,
    chain: Option<&str>,
    clinic: Option<&str>,
) -> Result<(), Status> {
    let denied = |what: &str| Status::permission_denied(format!("{what} is outside this key's scope ({scope})"));
    match scope {
        Scope::All | Scope::Manufacturer(_) => Ok(()),
        Scope::Chain(own) => {
            if chain.is_some_and(|chain| chain != own.as_str()) {
                return Err(denied("chain_id"));
            }
            if let Some(clinic) = clinic {
                let clinic = penwarden_domain::ClinicId::parse(clinic).map_err(|_| denied("clinic_id"))?;
                let clinic_chain = store.clinic_chain(&clinic).await.map_err(crate::status::from_store)?;
                if clinic_chain.as_deref() != Some(own.as_str()) {
                    return Err(denied("clinic_id"));
                }
            }
            Ok(())
        }
        Scope::Clinic(own) => {
            if clinic.is_some_and(|clinic| clinic != own.as_str()) {
                return Err(denied("clinic_id"));
            }
            if let Some(chain) = chain {
                let own_chain = store.clinic_chain(own).await.map_err(crate::status::from_store)?;
                if own_chain.as_deref() != Some(chain) {
                    return Err(denied("chain_id"));
                }
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_tokens_are_read_from_the_authorization_header() {
        let mut request = Request::new(());
        assert_eq!(bearer_token(&request).unwrap_err().code(), tonic::Code::Unauthenticated);
        request.metadata_mut().insert("authorization", "Basic abc".parse().unwrap());
        assert_eq!(bearer_token(&request).unwrap_err().code(), tonic::Code::Unauthenticated);
        request.metadata_mut().insert("authorization", "Bearer pwk_1_2".parse().unwrap());
        assert_eq!(bearer_token(&request).unwrap(), "pwk_1_2");
    }

    #[test]
    fn only_admins_pass_the_admin_check() {
        assert!(require_admin(&Scope::All, "x").is_ok());
        let chain = Scope::new(penwarden_domain::access::Role::Chain, "c").unwrap();
        assert_eq!(require_admin(&chain, "x").unwrap_err().code(), tonic::Code::PermissionDenied);
    }
}
