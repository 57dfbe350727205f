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
    Store::connect(&config.store.url).await.with_context(|| format!("opening the store {}", config.store.url))
}

fn random_hex(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut buffer);
    buffer.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Creates a key and prints its token (stdout, alone, so scripts can capture it); with
/// `token_file`, writes the token there (mode 0600) instead.
pub(crate) fn create(
    config_file: Option<&Path>,
    role: &str,
    scope: &str,
    label: &str,
    token_file: Option<&Path>,
) -> anyhow::Result<()> {
    let role = Role::from_name(role)
        .with_context(|| format!("unknown role {role:?}; use admin, manufacturer, chain or clinic"))?;
    let scope = Scope::new(role, scope)?;
    block_on(async {
        let store = open_store(config_file).await?;
        let (key_id, secret) = (random_hex(8), random_hex(32));
        let row = ApiKeyRow {
            key_id: key_id.clone(),
            secret_digest: secret_digest(&secret),
            role: role.as_str().into(),
            scope: scope.id().into(),
            label: label.into(),
            created_ms: now_ms(),
            revoked_ms: None,
        };
        store.insert_api_key(&row).await?;
        let fields = serde_json::json!({"key_id": key_id, "role": row.role, "scope": row.scope, "label": row.label});
        store.append_audit(&[crate::audit::server_entry("cli", "apikey.create", fields, 1)]).await?;
        store.close().await;
        let token = ApiToken::format(&key_id, &secret);
        match token_file {
            Some(path) => {
                write_private(path, &token)?;
                eprintln!("created API key {key_id} ({scope}); token written to {}", path.display());
            }
            None => {
                eprintln!("created API key {key_id} ({scope}); the token below is shown only this once");
                println!("{token}");
            }
        }
        Ok(())
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
        println!("{:<18} {:<13} {:<24} {:<10} label", "key id", "role", "scope", "state");
        for key in &keys {
            let state = if key.revoked_ms.is_some() { "revoked" } else { "active" };
            println!("{:<18} {:<13} {:<24} {:<10} {}", key.key_id, key.role, key.scope, state, key.label);
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
