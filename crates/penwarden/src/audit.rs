//! `penwarden audit verify|export`: the audit trail, read straight from the store, and the
//! entries the server side appends for changes made outside the API (keys, start-up).

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use penwarden_domain::audit::{AuditCall, Break, ChainHead, Verifier};
use penwarden_store::Store;

use crate::apikey::{block_on, now_ms, open_store};

/// Entries read per page.
const PAGE: u32 = 10_000;

/// A change made on the server (not through the API), as an audit entry: `actor` is `cli` or
/// `server`, `request` its fields as JSON.
pub(crate) fn server_entry(actor: &str, method: &str, request: serde_json::Value, records: i64) -> AuditCall {
    AuditCall {
        time_ms: now_ms(),
        key_id: actor.into(),
        role: "operator".into(),
        scope: String::new(),
        method: method.into(),
        request: request.to_string(),
        status: "OK".into(),
        records,
    }
}

/// Recomputes the chain from its first entry and names the first one that does not hold;
/// with `head` (SEQ:HASH, as published in the log), also finds entries cut off the end.
pub(crate) fn verify(config_file: Option<&Path>, head: Option<&str>) -> anyhow::Result<()> {
    let published = head
        .map(|text| ChainHead::parse(text).with_context(|| format!("--head {text:?} is not SEQ:HASH (64 hex digits)")))
        .transpose()?;
    block_on(async {
        let store = open_store(config_file).await?;
        let outcome = walk(&store, published.as_ref()).await;
        store.close().await;
        match outcome? {
            Ok((entries, Some(head))) => {
                println!("audit trail intact: {entries} entries, head {head}");
                Ok(())
            }
            Ok((_, None)) => {
                println!("audit trail empty");
                Ok(())
            }
            Err(broken) => anyhow::bail!("audit trail broken at entry {}: {broken}", broken.seq()),
        }
    })
}

async fn walk(store: &Store, published: Option<&ChainHead>) -> anyhow::Result<Result<(u64, Option<ChainHead>), Break>> {
    let mut verifier = Verifier::default();
    let (mut after, mut count) = (0, 0u64);
    loop {
        let page = store.audit_entries(after, PAGE).await?;
        for entry in &page {
            if let Err(broken) = verifier.check(entry, published) {
                return Ok(Err(broken));
            }
            count += 1;
        }
        match page.last() {
            Some(last) if page.len() == PAGE as usize => after = last.record.seq,
            _ => break,
        }
        eprintln!("verified {count} entries…");
    }
    Ok(verifier.finish(published).map(|head| (count, head)))
}

/// Writes the trail as JSON lines (one entry per line, in order) to stdout.
pub(crate) fn export(config_file: Option<&Path>, after_seq: i64) -> anyhow::Result<()> {
    block_on(async {
        let store = open_store(config_file).await?;
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        let (mut after, mut count) = (after_seq.max(0), 0u64);
        loop {
            let page = store.audit_entries(after, PAGE).await?;
            for entry in &page {
                let (seq, record) = (entry.record.seq, &entry.record.call);
                let line = serde_json::json!({
                    "seq": seq,
                    "time_unix_ms": record.time_ms,
                    "key_id": record.key_id,
                    "role": record.role,
                    "scope": record.scope,
                    "method": record.method,
                    "request": record.request,
                    "status": record.status,
                    "records": record.records,
                    "previous_hash": entry.previous_hash,
                    "hash": entry.hash,
                });
                writeln!(out, "{line}")?;
                count += 1;
            }
            match page.last() {
                Some(last) if page.len() == PAGE as usize => after = last.record.seq,
                _ => break,
            }
        }
        out.flush()?;
        store.close().await;
        eprintln!("exported {count} audit entries");
        Ok(())
    })
}
