//! The audit trail: who called what, when, with what answer, as a hash chain.
//!
//! Each entry carries the SHA-256 of its content and of the previous entry's hash, so an entry
//! edited, deleted or moved breaks every hash after it, and [`verify`] names the first entry
//! that does not hold. Cutting entries off the end leaves a shorter chain that is still
//! consistent: that is caught by comparing the head (last sequence number and hash) with one
//! published earlier and kept outside the database (docs/security.md).

use std::fmt;

use sha2::{Digest, Sha256};

/// The hash a chain's first entry names as its predecessor.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// One call or change, as it is recorded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCall {
    pub time_ms: i64,
    /// The API key's id (never its secret), or who acted on the server (`cli`, `server`).
    pub key_id: String,
    pub role: String,
    pub scope: String,
    /// The RPC (`penwarden.api.v1.FleetService/RecallLot`) or server action (`apikey.create`).
    pub method: String,
    /// The request's fields as JSON: its filters and ids.
    pub request: String,
    /// `OK` or the gRPC status code's name.
    pub status: String,
    /// Records returned (or changed).
    pub records: i64,
}

/// What one entry records: a call, at its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// 1, 2, 3 … without gaps.
    pub seq: i64,
    pub call: AuditCall,
}

impl AuditRecord {
    /// The bytes the hash covers: every field, each prefixed by its length, so no two
    /// different records share them.
    fn content(&self) -> String {
        let call = &self.call;
        let numbers = [self.seq.to_string(), call.time_ms.to_string(), call.records.to_string()];
        let fields = [
            numbers[0].as_str(),
            numbers[1].as_str(),
            &call.key_id,
            &call.role,
            &call.scope,
            &call.method,
            &call.request,
            &call.status,
            numbers[2].as_str(),
        ];
        let mut content = String::new();
        for field in fields {
            content.push_str(&field.len().to_string());
            content.push(':');
            content.push_str(field);
            content.push(';');
        }
        content
    }

    /// This record's hash as the entry after `previous_hash`, lowercase hex.
    pub fn hash(&self, previous_hash: &str) -> String {
        let mut digest = Sha256::new();
        digest.update(previous_hash.as_bytes());
        digest.update(b"\n");
        digest.update(self.content().as_bytes());
        digest.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// An entry as stored: the record and the hashes that chain it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub record: AuditRecord,
    pub previous_hash: String,
    pub hash: String,
}

impl AuditEntry {
    /// Chains `record` after `previous` (None: the first entry).
    pub fn chain(record: AuditRecord, previous: Option<&AuditEntry>) -> AuditEntry {
        let previous_hash = previous.map_or(GENESIS_HASH, |entry| entry.hash.as_str()).to_owned();
        let hash = record.hash(&previous_hash);
        AuditEntry { record, previous_hash, hash }
    }
}

/// The end of a chain: what an operator keeps outside the database to check against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainHead {
    pub seq: i64,
    pub hash: String,
}

impl fmt::Display for ChainHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.seq, self.hash)
    }
}

/// Hex digits of a hash a metric can carry exactly: 52 bits, within an f64's integers.
pub const METRIC_HASH_DIGITS: usize = 13;

impl ChainHead {
    /// Parses `SEQ:HASH`, as [`ChainHead`] displays itself. The hash may be shortened to its
    /// first [`METRIC_HASH_DIGITS`] digits or more (what the metric keeps).
    pub fn parse(text: &str) -> Option<ChainHead> {
        let (seq, hash) = text.split_once(':')?;
        let hash_ok = (METRIC_HASH_DIGITS..=64).contains(&hash.len()) && hash.bytes().all(|b| b.is_ascii_hexdigit());
        Some(ChainHead { seq: seq.parse().ok().filter(|seq| *seq > 0)?, hash: hash_ok.then(|| hash.to_lowercase())? })
    }

    /// The hash's first 52 bits as a number, for a metric (Prometheus keeps its history outside
    /// the database, which is what a head is checked against).
    pub fn hash_prefix_value(&self) -> f64 {
        u64::from_str_radix(&self.hash[..METRIC_HASH_DIGITS.min(self.hash.len())], 16).map_or(0.0, |v| v as f64)
    }

    /// The head back from a metric's two values (sequence number and hash prefix).
    pub fn from_metric(seq: f64, hash_prefix: f64) -> ChainHead {
        ChainHead { seq: seq as i64, hash: format!("{:0width$x}", hash_prefix as u64, width = METRIC_HASH_DIGITS) }
    }
}

/// The first place a chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Break {
    #[error("entry {seq} is missing (the chain goes from {before} to {after})")]
    Missing { seq: i64, before: i64, after: i64 },
    #[error("entry {seq} does not match its hash: its content was changed")]
    Edited { seq: i64 },
    #[error("entry {seq} does not follow entry {previous}: its previous hash is not that entry's hash")]
    Unlinked { seq: i64, previous: i64 },
    #[error("the chain ends at entry {last}, before the published head {head}: entries were cut off the end")]
    Truncated { last: i64, head: ChainHead },
    #[error("entry {seq} differs from the published head {head}")]
    HeadMismatch { seq: i64, head: ChainHead },
}

impl Break {
    /// The entry the break is found at.
    pub fn seq(&self) -> i64 {
        match self {
            Break::Missing { seq, .. } | Break::Edited { seq } | Break::Unlinked { seq, .. } => *seq,
            Break::Truncated { last, .. } => last + 1,
            Break::HeadMismatch { seq, .. } => *seq,
        }
    }
}

/// Walks a chain in order, entry by entry, and knows where it stands.
#[derive(Debug, Default)]
pub struct Verifier {
    last: Option<ChainHead>,
    /// Whether the published head was passed (and matched).
    head_seen: bool,
}

impl Verifier {
    /// Checks the next entry (in sequence order).
    pub fn check(&mut self, entry: &AuditEntry, published: Option<&ChainHead>) -> Result<(), Break> {
        let seq = entry.record.seq;
        let (expected_seq, expected_previous) = match &self.last {
            None => (1, GENESIS_HASH),
            Some(last) => (last.seq + 1, last.hash.as_str()),
        };
        if seq != expected_seq {
            return Err(Break::Missing { seq: expected_seq, before: expected_seq - 1, after: seq });
        }
        if entry.record.hash(&entry.previous_hash) != entry.hash {
            return Err(Break::Edited { seq });
        }
        if entry.previous_hash != expected_previous {
            return Err(Break::Unlinked { seq, previous: seq - 1 });
        }
        if let Some(head) = published.filter(|head| head.seq == seq) {
            if !entry.hash.starts_with(&head.hash) {
                return Err(Break::HeadMismatch { seq, head: head.clone() });
            }
            self.head_seen = true;
        }
        self.last = Some(ChainHead { seq, hash: entry.hash.clone() });
        Ok(())
    }

    /// After the last entry: the chain's head, unless it ends before the published one.
    pub fn finish(self, published: Option<&ChainHead>) -> Result<Option<ChainHead>, Break> {
        match published {
            Some(head) if !self.head_seen => {
                Err(Break::Truncated { last: self.last.map_or(0, |last| last.seq), head: head.clone() })
            }
            _ => Ok(self.last),
        }
    }
}

/// Verifies a whole chain in order; `published` is a head kept outside the database.
pub fn verify<'a>(
    entries: impl IntoIterator<Item = &'a AuditEntry>,
    published: Option<&ChainHead>,
) -> Result<Option<ChainHead>, Break> {
    let mut verifier = Verifier::default();
    for entry in entries {
        verifier.check(entry, published)?;
    }
    verifier.finish(published)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(seq: i64, records: i64) -> AuditRecord {
        AuditRecord {
            seq,
            call: AuditCall {
                time_ms: 1_790_000_000_000 + seq,
                key_id: "3f2a9c0d1e4b5a67".into(),
                role: "chain".into(),
                scope: "chain-1".into(),
                method: "penwarden.api.v1.ComplianceService/ListViolations".into(),
                request: r#"{"chainId":"chain-1"}"#.into(),
                status: "OK".into(),
                records,
            },
        }
    }

    fn chain(length: i64) -> Vec<AuditEntry> {
        let mut entries: Vec<AuditEntry> = Vec::new();
        for seq in 1..=length {
            let entry = AuditEntry::chain(record(seq, seq * 2), entries.last());
            entries.push(entry);
        }
        entries
    }

    #[test]
    fn an_intact_chain_verifies_to_its_head() {
        let entries = chain(5);
        let head = verify(&entries, None).unwrap().unwrap();
        assert_eq!(head, ChainHead { seq: 5, hash: entries[4].hash.clone() });
        assert_eq!(verify(&entries, Some(&head)), Ok(Some(head.clone())));
        assert_eq!(ChainHead::parse(&head.to_string()), Some(head));
        assert_eq!(verify(&[], None), Ok(None));
    }

    #[test]
    fn the_first_entry_that_does_not_hold_is_named() {
        let mut edited = chain(5);
        edited[2].record.call.records = 99;
        assert_eq!(verify(&edited, None), Err(Break::Edited { seq: 3 }));

        let mut deleted = chain(5);
        deleted.remove(3);
        assert_eq!(verify(&deleted, None).unwrap_err().seq(), 4);

        // Rehashed after an edit: the entry holds on its own but no longer follows its
        // predecessor's hash... unless every later entry is rehashed too, which a published
        // head catches.
        let mut rehashed = chain(5);
        rehashed[2].record.call.records = 99;
        rehashed[2].hash = rehashed[2].record.hash(&rehashed[2].previous_hash);
        assert_eq!(verify(&rehashed, None), Err(Break::Unlinked { seq: 4, previous: 3 }));
        let original_head = verify(&chain(5), None).unwrap().unwrap();
        let mut rewritten: Vec<AuditEntry> = Vec::new();
        for entry in rehashed {
            let next = AuditEntry::chain(entry.record, rewritten.last());
            rewritten.push(next);
        }
        assert_eq!(verify(&rewritten, None).map(|head| head.is_some()), Ok(true), "consistent on its own");
        assert!(matches!(verify(&rewritten, Some(&original_head)), Err(Break::HeadMismatch { seq: 5, .. })));
    }

    #[test]
    fn a_head_from_the_metric_checks_like_the_full_one() {
        let entries = chain(5);
        let head = verify(&entries, None).unwrap().unwrap();
        let from_metric = ChainHead::from_metric(head.seq as f64, head.hash_prefix_value());
        assert_eq!(from_metric.hash, head.hash[..METRIC_HASH_DIGITS]);
        assert_eq!(ChainHead::parse(&from_metric.to_string()), Some(from_metric.clone()));
        assert!(verify(&entries, Some(&from_metric)).is_ok());
        assert!(matches!(verify(&entries[..4], Some(&from_metric)), Err(Break::Truncated { last: 4, .. })));
        assert_eq!(ChainHead::parse("5:abc"), None, "too short to mean anything");
    }

    #[test]
    fn a_cut_tail_is_caught_against_the_published_head() {
        let entries = chain(5);
        let head = verify(&entries, None).unwrap().unwrap();
        assert_eq!(verify(&entries[..3], None).map(|h| h.map(|h| h.seq)), Ok(Some(3)), "consistent on its own");
        assert_eq!(verify(&entries[..3], Some(&head)), Err(Break::Truncated { last: 3, head: head.clone() }));
        // Entries after the published head are fine: the chain grew since.
        let longer = chain(7);
        assert!(verify(&longer, Some(&head)).is_ok());
    }

    proptest! {
        /// Changing any one field of any one entry is found at that entry.
        #[test]
        fn any_single_change_is_found_where_it_was_made(length in 1i64..20, at in 0usize..20, field in 0usize..6) {
            let mut entries = chain(length);
            let at = at % entries.len();
            let record = &mut entries[at].record.call;
            match field {
                0 => record.time_ms += 1,
                1 => record.key_id.push('x'),
                2 => record.scope = "chain-2".into(),
                3 => record.method.push('x'),
                4 => record.request = "{}".into(),
                _ => record.status = "PERMISSION_DENIED".into(),
            }
            prop_assert_eq!(verify(&entries, None), Err(Break::Edited { seq: at as i64 + 1 }));
        }
    }
}
