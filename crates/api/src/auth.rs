//! Authentication: every RPC starts by turning its bearer token into the caller's scope.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use penwarden_domain::access::{secret_matches, ApiToken, Scope};
use penwarden_domain::rate::TokenBuckets;
use penwarden_store::Store;
use tonic::{Request, Status};

/// How long a verified key is trusted without asking the store again: a revoked key stops
/// working within this time.
const CACHE_TTL: Duration = Duration::from_secs(5);
const CACHE_MAX_ENTRIES: usize = 10_000;
/// A key's last-used time is written at most this often.
const LAST_USED_RESOLUTION_MS: i64 = 60_000;

/// Requests per second each API key may make, beyond a burst (0, 0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    pub per_s: u32,
    pub burst: u32,
}

/// A key verified against the store, trusted for CACHE_TTL.
#[derive(Clone)]
struct Verified {
    key_id: String,
    scope: Scope,
    expires_ms: Option<i64>,
    at: Instant,
}

pub(crate) struct Authenticator {
    store: Store,
    /// Verified tokens (by their full text).
    cache: Mutex<HashMap<String, Verified>>,
    limits: Mutex<TokenBuckets<String>>,
    limit: RateLimit,
    /// When each key's last use was last written.
    last_used_written: Mutex<HashMap<String, i64>>,
}

impl Authenticator {
    pub(crate) fn new(store: Store, limit: RateLimit) -> Authenticator {
        Authenticator {
            store,
            cache: Mutex::new(HashMap::new()),
            limits: Mutex::new(TokenBuckets::new(limit.burst, limit.per_s)),
            limit,
            last_used_written: Mutex::new(HashMap::new()),
        }
    }

    /// The scope of the request's API key, or UNAUTHENTICATED. One message for every kind of
    /// failure (unknown, revoked, expired), so a caller learns nothing about which keys exist.
    /// A key over its rate limit gets RESOURCE_EXHAUSTED.
    pub(crate) async fn scope<T>(&self, request: &Request<T>) -> Result<Scope, Status> {
        let token = bearer_token(request)?;
        let now = crate::now_ms();
        let rejected = || Status::unauthenticated("invalid, revoked or expired API key");
        let verified = match self.cached(token) {
            Some(verified) => verified,
            None => {
                let parsed = ApiToken::parse(token).ok_or_else(rejected)?;
                let stored = self.store.api_key(parsed.key_id).await.map_err(crate::status::from_store)?;
                let stored = stored.filter(|key| key.is_active(now)).ok_or_else(rejected)?;
                if !secret_matches(parsed.secret, &stored.secret_digest) {
                    return Err(rejected());
                }
                let scope = Scope::from_stored(&stored.role, &stored.scope).map_err(|error| {
                    tracing::error!(key_id = %stored.key_id, %error, "stored API key has an invalid role or scope");
                    rejected()
                })?;
                let verified =
                    Verified { key_id: stored.key_id, scope, expires_ms: stored.expires_ms, at: Instant::now() };
                let mut cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if cache.len() >= CACHE_MAX_ENTRIES {
                    cache.clear();
                }
                cache.insert(token.to_owned(), verified.clone());
                verified
            }
        };
        if verified.expires_ms.is_some_and(|expires| now >= expires) {
            return Err(rejected());
        }
        let allowed = self.limits.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).allow(&verified.key_id, now);
        if !allowed {
            return Err(Status::resource_exhausted(format!(
                "API key {} is over its rate limit of {} requests/s (burst {}); retry later",
                verified.key_id, self.limit.per_s, self.limit.burst
            )));
        }
        self.note_use(&verified.key_id, now);
        Ok(verified.scope)
    }

    fn cached(&self, token: &str) -> Option<Verified> {
        let cache = self.cache.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        cache.get(token).filter(|verified| verified.at.elapsed() < CACHE_TTL).cloned()
    }

    /// Writes the key's last-used time, at most once a minute, off the request's path.
    fn note_use(&self, key_id: &str, now: i64) {
        let mut written = self.last_used_written.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if written.get(key_id).is_some_and(|at| now - at < LAST_USED_RESOLUTION_MS) {
            return;
        }
        if written.len() >= CACHE_MAX_ENTRIES {
            written.clear();
        }
        written.insert(key_id.to_owned(), now);
        let (store, used) = (self.store.clone(), vec![(key_id.to_owned(), now)]);
        tokio::spawn(async move {
            if let Err(error) = store.touch_api_keys(&used).await {
                tracing::warn!(%error, "could not record an API key's last use");
            }
        });
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

    fn with_token(token: &str) -> Request<()> {
        let mut request = Request::new(());
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        request
    }

    async fn key(store: &Store, key_id: &str, expires_ms: Option<i64>) -> String {
        let secret = "ab".repeat(32);
        let row = penwarden_store::ApiKeyRow {
            key_id: key_id.into(),
            secret_digest: penwarden_domain::access::secret_digest(&secret),
            role: "chain".into(),
            scope: "chain-1".into(),
            label: String::new(),
            created_ms: 0,
            revoked_ms: None,
            expires_ms,
            last_used_ms: None,
        };
        store.insert_api_key(&row).await.unwrap();
        ApiToken::format(key_id, &secret)
    }

    #[tokio::test]
    async fn keys_expire_are_rate_limited_each_on_its_own_and_record_their_last_use() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite:{}", dir.path().join("auth.db").display())).await.unwrap();
        let auth = Authenticator::new(store.clone(), RateLimit { per_s: 1, burst: 2 });
        let busy = key(&store, "00000000000000a1", None).await;
        let other = key(&store, "00000000000000a2", Some(crate::now_ms() + 60_000)).await;
        let expired = key(&store, "00000000000000a3", Some(crate::now_ms() - 1)).await;

        assert!(auth.scope(&with_token(&busy)).await.is_ok());
        assert!(auth.scope(&with_token(&busy)).await.is_ok());
        let limited = auth.scope(&with_token(&busy)).await.unwrap_err();
        assert_eq!(limited.code(), tonic::Code::ResourceExhausted);
        assert!(limited.message().contains("00000000000000a1") && !limited.message().contains(&"ab".repeat(32)));
        assert!(auth.scope(&with_token(&other)).await.is_ok(), "another key has its own bucket");
        let refused = auth.scope(&with_token(&expired)).await.unwrap_err();
        assert_eq!(
            (refused.code(), refused.message()),
            (tonic::Code::Unauthenticated, "invalid, revoked or expired API key")
        );

        // The last use is written off the request's path.
        let mut last_used = None;
        for _ in 0..100 {
            last_used = store.api_key("00000000000000a1").await.unwrap().and_then(|key| key.last_used_ms);
            if last_used.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(last_used.is_some_and(|at| at > 0));
        assert_eq!(store.api_key("00000000000000a3").await.unwrap().unwrap().last_used_ms, None);
    }

    #[test]
    fn only_admins_pass_the_admin_check() {
        assert!(require_admin(&Scope::All, "x").is_ok());
        let chain = Scope::new(penwarden_domain::access::Role::Chain, "c").unwrap();
        assert_eq!(require_admin(&chain, "x").unwrap_err().code(), tonic::Code::PermissionDenied);
    }
}
