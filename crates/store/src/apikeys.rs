//! API keys: stored as digests, looked up by key id.

use crate::backend::{reading, writing, StoreRow};

use crate::{Error, Result, Store};

#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyRow {
    pub key_id: String,
    pub secret_digest: String,
    pub role: String,
    pub scope: String,
    pub label: String,
    pub created_ms: i64,
    pub revoked_ms: Option<i64>,
    /// When the key stops working (None: never).
    pub expires_ms: Option<i64>,
    /// When it was last used, to the minute.
    pub last_used_ms: Option<i64>,
}

impl ApiKeyRow {
    /// Whether the key may be used at `now_ms`: not revoked, not expired.
    pub fn is_active(&self, now_ms: i64) -> bool {
        self.revoked_ms.is_none() && self.expires_ms.is_none_or(|expires| now_ms < expires)
    }
}

fn api_key_row(row: &impl StoreRow) -> ApiKeyRow {
    ApiKeyRow {
        key_id: row.column(0),
        secret_digest: row.column(1),
        role: row.column(2),
        scope: row.column(3),
        label: row.column(4),
        created_ms: row.column(5),
        revoked_ms: row.column(6),
        expires_ms: row.column(7),
        last_used_ms: row.column(8),
    }
}

const API_KEY_COLUMNS: &str =
    "key_id, secret_digest, role, scope, label, created_ms, revoked_ms, expires_ms, last_used_ms";

impl Store {
    pub async fn insert_api_key(&self, key: &ApiKeyRow) -> Result<()> {
        writing!(self, pool => {
            sqlx::query(
                "INSERT INTO api_keys (key_id, secret_digest, role, scope, label, created_ms, expires_ms)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&key.key_id)
            .bind(&key.secret_digest)
            .bind(&key.role)
            .bind(&key.scope)
            .bind(&key.label)
            .bind(key.created_ms)
            .bind(key.expires_ms)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The key with this id, revoked or not.
    pub async fn api_key(&self, key_id: &str) -> Result<Option<ApiKeyRow>> {
        reading!(self, pool => {
            let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys WHERE key_id = $1");
            let row = sqlx::query(&sql).bind(key_id).fetch_optional(pool).await?;
            Ok(row.as_ref().map(api_key_row))
        })
    }

    pub async fn list_api_keys(&self) -> Result<Vec<ApiKeyRow>> {
        reading!(self, pool => {
            let sql = format!("SELECT {API_KEY_COLUMNS} FROM api_keys ORDER BY created_ms, key_id");
            let rows = sqlx::query(&sql).fetch_all(pool).await?;
            Ok(rows.iter().map(api_key_row).collect())
        })
    }

    /// Makes a key stop working at `expires_ms`, unless it expires sooner already.
    pub async fn expire_api_key(&self, key_id: &str, expires_ms: i64) -> Result<()> {
        writing!(self, pool => {
            let updated =
                sqlx::query("UPDATE api_keys SET expires_ms = CASE WHEN expires_ms < $1 THEN expires_ms ELSE $1 END WHERE key_id = $2")
                    .bind(expires_ms)
                    .bind(key_id)
                    .execute(pool)
                    .await?
                    .rows_affected();
            if updated == 0 {
                return Err(Error::NotFound(format!("API key {key_id}")));
            }
            Ok(())
        })
    }

    /// Records when keys were last used (never moving a time back).
    pub async fn touch_api_keys(&self, used: &[(String, i64)]) -> Result<()> {
        writing!(self, pool => {
            if used.is_empty() {
                return Ok(());
            }
            let pairs = serde_json::to_string(used).expect("pairs of a string and an integer serialize");
            let sql = format!(
                "UPDATE api_keys SET last_used_ms = CAST(used.value ->> 1 AS BIGINT) FROM {}
                 WHERE api_keys.key_id = used.value ->> 0
                   AND (api_keys.last_used_ms IS NULL OR api_keys.last_used_ms < CAST(used.value ->> 1 AS BIGINT))",
                self.backend.dialect().json_rows(1, "used")
            );
            sqlx::query(&sql)
            .bind(pairs)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// Revokes a key for good; revoking it again changes nothing.
    pub async fn revoke_api_key(&self, key_id: &str, now_ms: i64) -> Result<()> {
        writing!(self, pool => {
            let updated = sqlx::query("UPDATE api_keys SET revoked_ms = COALESCE(revoked_ms, $1) WHERE key_id = $2")
                .bind(now_ms)
                .bind(key_id)
                .execute(pool)
                .await?
                .rows_affected();
            if updated == 0 {
                return Err(Error::NotFound(format!("API key {key_id}")));
            }
            Ok(())
        })
    }
}
