//! The audit trail's storage: appends chain each entry to the last one in the same
//! transaction, so processes sharing the database (serve, the CLI) extend one chain.

use penwarden_domain::audit::{AuditCall, AuditEntry, AuditRecord, ChainHead};

use crate::backend::{in_write_transaction, reading, Column as _, StoreRow, AUDIT_LOCK};
use crate::{Result, Store};

const AUDIT_COLUMNS: &str = "seq, time_ms, key_id, role, scope, method, request, status, records, previous_hash, hash";

fn audit_entry(row: &impl StoreRow) -> AuditEntry {
    AuditEntry {
        record: AuditRecord {
            seq: row.column(0),
            call: AuditCall {
                time_ms: row.column(1),
                key_id: row.column(2),
                role: row.column(3),
                scope: row.column(4),
                method: row.column(5),
                request: row.column(6),
                status: row.column(7),
                records: row.column(8),
            },
        },
        previous_hash: row.column(9),
        hash: row.column(10),
    }
}

impl Store {
    /// Appends `entries` in order after the chain's current head, in one transaction; returns
    /// the new head. The transaction takes a write lock first, so two processes never chain
    /// onto the same entry.
    pub async fn append_audit(&self, entries: &[AuditCall]) -> Result<Option<ChainHead>> {
        // The whole batch as one JSON array and one statement (like the batch writes of
        // ingest): a row-by-row insert costs a statement execution per API call.
        let insert = format!(
            "INSERT INTO audit_log (seq, time_ms, key_id, role, scope, method, request, status, records,
                 previous_hash, hash)
             SELECT CAST(value ->> 0 AS BIGINT), CAST(value ->> 1 AS BIGINT), value ->> 2, value ->> 3, value ->> 4,
                 value ->> 5, value ->> 6, value ->> 7, CAST(value ->> 8 AS BIGINT), value ->> 9, value ->> 10
             FROM {}",
            self.backend.dialect().json_rows(1, "appended")
        );
        in_write_transaction!(self, AUDIT_LOCK, connection => {
            let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log ORDER BY seq DESC LIMIT 1");
            let mut last = sqlx::query(&sql).fetch_optional(&mut *connection).await?.as_ref().map(audit_entry);
            let mut rows = Vec::with_capacity(entries.len());
            for new in entries {
                let seq = last.as_ref().map_or(1, |entry| entry.record.seq + 1);
                let record = AuditRecord { seq, call: new.clone() };
                let entry = AuditEntry::chain(record, last.as_ref());
                rows.push(serde_json::json!([
                    entry.record.seq,
                    entry.record.call.time_ms,
                    entry.record.call.key_id,
                    entry.record.call.role,
                    entry.record.call.scope,
                    entry.record.call.method,
                    entry.record.call.request,
                    entry.record.call.status,
                    entry.record.call.records,
                    entry.previous_hash,
                    entry.hash,
                ]));
                last = Some(entry);
            }
            sqlx::query(&insert)
                .bind(serde_json::Value::Array(rows).to_string())
                .execute(&mut *connection)
                .await?;
            last.map(|entry| ChainHead { seq: entry.record.seq, hash: entry.hash })
        })
    }

    /// Up to `limit` entries after `after_seq`, in order (for paging and for verification).
    pub async fn audit_entries(&self, after_seq: i64, limit: u32) -> Result<Vec<AuditEntry>> {
        reading!(self, pool => {
            let sql = format!("SELECT {AUDIT_COLUMNS} FROM audit_log WHERE seq > $1 ORDER BY seq LIMIT $2");
            let rows = sqlx::query(&sql).bind(after_seq).bind(i64::from(limit)).fetch_all(pool).await?;
            Ok(rows.iter().map(audit_entry).collect())
        })
    }

    /// The last entry's place: None for an empty trail.
    pub async fn audit_head(&self) -> Result<Option<ChainHead>> {
        reading!(self, pool => {
            let row =
                sqlx::query("SELECT seq, hash FROM audit_log ORDER BY seq DESC LIMIT 1").fetch_optional(pool).await?;
            Ok(row.map(|row| ChainHead { seq: row.column(0), hash: row.column(1) }))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::writing;

    fn new_entry(method: &str) -> AuditCall {
        AuditCall {
            time_ms: 1,
            key_id: "k".into(),
            role: "admin".into(),
            scope: String::new(),
            method: method.into(),
            request: "{}".into(),
            status: "OK".into(),
            records: 1,
        }
    }

    #[tokio::test]
    async fn appends_extend_one_chain_that_verifies_and_refuses_edits() {
        let (store, _dir) = crate::test_support::temp_store().await;
        assert_eq!(store.audit_head().await.unwrap(), None);
        store.append_audit(&[new_entry("a"), new_entry("b")]).await.unwrap();
        let head = store.append_audit(&[new_entry("c")]).await.unwrap().unwrap();
        assert_eq!(head.seq, 3);
        assert_eq!(store.audit_head().await.unwrap(), Some(head.clone()));
        let entries = store.audit_entries(0, 100).await.unwrap();
        assert_eq!(entries.iter().map(|e| e.record.call.method.as_str()).collect::<Vec<_>>(), ["a", "b", "c"]);
        assert_eq!(penwarden_domain::audit::verify(&entries, Some(&head)), Ok(Some(head)));
        assert_eq!(store.audit_entries(1, 1).await.unwrap()[0].record.seq, 2, "paging");
        // The database refuses edits and deletions while its triggers stand.
        let edit = writing!(store, pool => sqlx::query("UPDATE audit_log SET records = 9 WHERE seq = 2").execute(pool).await.map(|_| ()));
        assert!(edit.unwrap_err().to_string().contains("append-only"));
        let delete =
            writing!(store, pool => sqlx::query("DELETE FROM audit_log WHERE seq = 3").execute(pool).await.map(|_| ()));
        assert!(delete.is_err());
        store.close().await;
    }
}
