//! `penwarden apikey create|list|revoke`: API keys, written straight to the store.
//!
//! The token is printed once, at creation; only a digest of its secret is stored, so a lost
//! token cannot be recovered, only revoked and replaced.

use std::path::Path;

use anyhow::Context;
use penwarden_domain::access::{secret_digest, ApiToken, Role, Scope};
use penwarden_store::{ApiKeyRow, Store};
use rand::RngCore;

use crate::config::Config;

pub(crate) fn block_on<T>(future: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(future)
}

pub(crate) async fn open_store(config_file: Option<&Path>) -> anyhow::Result<Store> {
    let config = Config::load(config_file, |name| std::env::var(name).ok()).map_err(anyhow::Error::msg)?;
    Store::connect(&config.store.url)
        .await
        .with_context(|| format!("opening the store {}", penwarden_store::redact_url(&config.store.url)))
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buffer);
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// How a key's token reaches its holder: stdout (alone, so scripts can capture it) or a file
/// (mode 0600).
fn hand_out(token: &str, key_id: &str, scope: &Scope, token_file: Option<&Path>) -> anyhow::Result<()> {
    match token_file {
        Some(path) => {
            write_private(path, token)?;
            eprintln!("created API key {key_id} ({scope}); token written to {}", path.display());
        }
        None => {
            eprintln!("created API key {key_id} ({scope}); the token below is shown only this once");
            println!("{token}");
        }
    }
    Ok(())
}

/// A new key's row and token: 64 random bits of id, 256 of secret (only its digest is kept).
fn new_key(scope: &Scope, label: &str, expires_ms: Option<i64>) -> (ApiKeyRow, String) {
    let (key_id, secret) = (random_hex(8), random_hex(32));
    let row = ApiKeyRow {
        key_id: key_id.clone(),
        secret_digest: secret_digest(&secret),
        role: scope.role().as_str().into(),
        scope: scope.id().into(),
        label: label.into(),
        created_ms: now_ms(),
        revoked_ms: None,
        expires_ms,
        last_used_ms: None,
    };
    (row, ApiToken::format(&key_id, &secret))
}

/// `90d`, `12h`, `30m`, `45s` as milliseconds.
pub(crate) fn parse_duration_ms(text: &str) -> anyhow::Result<i64> {
    let unit_at = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(unit_at);
    let number: i64 =
        number.parse().with_context(|| format!("{text:?}: a duration is a number and a unit, e.g. 90d"))?;
    let unit_ms = match unit {
        "d" => 86_400_000,
        "h" => 3_600_000,
        "m" => 60_000,
        "s" => 1_000,
        _ => anyhow::bail!("{text:?}: the unit must be d, h, m or s"),
    };
    number.checked_mul(unit_ms).with_context(|| format!("{text:?} is too long"))
}

/// Creates a key and prints its token (stdout, alone, so scripts can capture it); with
/// `token_file`, writes the token there (mode 0600) instead. `expires_in`: e.g. 90d.
pub(crate) fn create(
    config_file: Option<&Path>,
    role: &str,
    scope: &str,
    label: &str,
    expires_in: Option<&str>,
    token_file: Option<&Path>,
) -> anyhow::Result<()> {
    let role = Role::from_name(role)
        .with_context(|| format!("unknown role {role:?}; use admin, manufacturer, chain or clinic"))?;
    let scope = Scope::new(role, scope)?;
    let expires_ms = expires_in.map(parse_duration_ms).transpose()?.map(|lifetime| now_ms() + lifetime);
    block_on(async {
        let store = open_store(config_file).await?;
        let (row, token) = new_key(&scope, label, expires_ms);
        store.insert_api_key(&row).await?;
        let fields = serde_json::json!({
            "key_id": row.key_id, "role": row.role, "scope": row.scope, "label": row.label, "expires_ms": row.expires_ms,
        });
        store.append_audit(&[crate::audit::server_entry("cli", "apikey.create", fields, 1)]).await?;
        store.close().await;
        hand_out(&token, &row.key_id, &scope, token_file)
    })
}

/// Replaces a key: a new key with the same role, scope and expiry policy, and the old one
/// keeps working for `grace` (e.g. 24h), then stops.
pub(crate) fn rotate(
    config_file: Option<&Path>,
    key_id: &str,
    grace: &str,
    token_file: Option<&Path>,
) -> anyhow::Result<()> {
    let grace_ms = parse_duration_ms(grace)?;
    block_on(async {
        let store = open_store(config_file).await?;
        let now = now_ms();
        let old = store.api_key(key_id).await?.with_context(|| format!("no API key {key_id}"))?;
        if !old.is_active(now) {
            anyhow::bail!("API key {key_id} is revoked or expired already: create a new one instead");
        }
        let scope = Scope::from_stored(&old.role, &old.scope)?;
        // The new key lives as long as the old one was meant to, counted from now.
        let expires_ms = old.expires_ms.map(|expires| now + (expires - old.created_ms).max(0));
        let (row, token) = new_key(&scope, &format!("{} (rotation of {key_id})", old.label), expires_ms);
        store.insert_api_key(&row).await?;
        store.expire_api_key(key_id, now + grace_ms).await?;
        let fields = serde_json::json!({ "key_id": key_id, "new_key_id": row.key_id, "grace_ms": grace_ms });
        store.append_audit(&[crate::audit::server_entry("cli", "apikey.rotate", fields, 2)]).await?;
        store.close().await;
        eprintln!("API key {key_id} keeps working for {grace}, then stops (running servers notice within 5 s)");
        hand_out(&token, &row.key_id, &scope, token_file)
    })
}

fn write_private(path: &Path, token: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).with_context(|| format!("cannot write {}", path.display()))?;
    // The mode above applies only to a file this creates: one that existed keeps its own (often
    // world-readable) until narrowed here, before the secret goes in.
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("cannot make {} private", path.display()))?;
    writeln!(file, "{token}").with_context(|| format!("cannot write {}", path.display()))
}

pub(crate) fn list(config_file: Option<&Path>) -> anyhow::Result<()> {
    block_on(async {
        let store = open_store(config_file).await?;
        let keys = store.list_api_keys().await?;
        store.close().await;
        let now = now_ms();
        let time = |ms: Option<i64>| ms.map_or_else(|| "-".to_owned(), crate::query::format_time);
        println!(
            "{:<18} {:<13} {:<24} {:<8} {:<20} {:<20} label",
            "key id", "role", "scope", "state", "expires", "last used"
        );
        for key in &keys {
            let state = match (key.revoked_ms, key.is_active(now)) {
                (Some(_), _) => "revoked",
                (None, false) => "expired",
                (None, true) => "active",
            };
            println!(
                "{:<18} {:<13} {:<24} {:<8} {:<20} {:<20} {}",
                key.key_id,
                key.role,
                key.scope,
                state,
                time(key.expires_ms),
                time(key.last_used_ms),
                key.label
            );
        }
        eprintln!("{} keys", keys.len());
        Ok(())
    })
}

pub(crate) fn revoke(config_file: Option<&Path>, key_id: &str) -> anyhow::Result<()> {
    block_on(async {
        let store = open_store(config_file).await?;
        store.revoke_api_key(key_id, now_ms()).await?;
        let fields = serde_json::json!({ "key_id": key_id });
        store.append_audit(&[crate::audit::server_entry("cli", "apikey.revoke", fields, 1)]).await?;
        store.close().await;
        eprintln!("revoked API key {key_id}; running servers stop accepting it within 5 s");
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn a_token_file_is_private_even_when_it_existed_readable_by_all() {
        use std::os::unix::fs::PermissionsExt;
        let path = std::env::temp_dir().join(format!("penwarden-token-{}", std::process::id()));
        std::fs::write(&path, "old contents, much longer than the token that replaces them\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, "pwk_id_secret").unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "pwk_id_secret\n");
        std::fs::remove_file(path).unwrap();
    }
}
