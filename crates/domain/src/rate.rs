//! Token buckets per key: `burst` at once, refilled at `rate` per second. Pure: the caller
//! gives the time. Used per pen against floods (ingest) and per API key against abuse (API).

use std::collections::HashMap;
use std::hash::Hash;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated_ms: i64,
}

#[derive(Debug)]
pub struct TokenBuckets<K> {
    burst: f64,
    rate_per_ms: f64,
    buckets: HashMap<K, Bucket>,
    last_pruned_ms: i64,
}

/// How often buckets that have refilled are forgotten.
const PRUNE_INTERVAL_MS: i64 = 10_000;

impl<K: Hash + Eq + Clone> TokenBuckets<K> {
    /// `burst` at once, refilled at `rate_per_s`. A zero burst allows everything.
    pub fn new(burst: u32, rate_per_s: u32) -> TokenBuckets<K> {
        TokenBuckets {
            burst: f64::from(burst),
            rate_per_ms: f64::from(rate_per_s) / 1000.0,
            buckets: HashMap::new(),
            last_pruned_ms: 0,
        }
    }

    /// Takes a token for `key` at `now_ms`; false when its bucket is empty.
    pub fn allow(&mut self, key: &K, now_ms: i64) -> bool {
        if self.burst <= 0.0 {
            return true;
        }
        if now_ms - self.last_pruned_ms >= PRUNE_INTERVAL_MS {
            self.prune(now_ms);
        }
        if !self.buckets.contains_key(key) {
            // Cloning the key only for its first use keeps the hot path allocation-free.
            self.buckets.insert(key.clone(), Bucket { tokens: self.burst, updated_ms: now_ms });
        }
        let burst = self.burst;
        let Some(bucket) = self.buckets.get_mut(key) else { return true };
        let elapsed = (now_ms - bucket.updated_ms).max(0) as f64;
        bucket.tokens = (bucket.tokens + elapsed * self.rate_per_ms).min(burst);
        bucket.updated_ms = now_ms;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Forgets the buckets that have refilled: a full bucket is what an unknown key gets, so the
    /// map holds only keys used in the last `burst / rate` seconds.
    fn prune(&mut self, now_ms: i64) {
        let (burst, rate_per_ms) = (self.burst, self.rate_per_ms);
        self.buckets
            .retain(|_, bucket| bucket.tokens + (now_ms - bucket.updated_ms).max(0) as f64 * rate_per_ms < burst);
        self.last_pruned_ms = now_ms;
    }

    /// Keys with a bucket that has not refilled.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_the_rate() {
        let mut buckets = TokenBuckets::new(5, 10);
        assert_eq!((0..8).filter(|_| buckets.allow(&"P1", 0)).count(), 5);
        assert!(buckets.allow(&"P2", 0), "one key's excess does not limit another");
        assert!(!buckets.allow(&"P1", 50), "half a token after 50 ms");
        assert!(buckets.allow(&"P1", 100), "a token per 100 ms at 10/s");
        assert_eq!((0..20).filter(|_| buckets.allow(&"P1", 10_000)).count(), 5, "refill stops at the burst");
    }

    #[test]
    fn refilled_buckets_are_forgotten() {
        let mut buckets = TokenBuckets::new(5, 10);
        for i in 0..1000 {
            buckets.allow(&format!("P{i}"), 1);
        }
        let busy = "BUSY".to_owned();
        for _ in 0..5 {
            buckets.allow(&busy, 10_500);
        }
        // At 10.5 s every bucket of the first thousand keys has refilled (0.5 s per token).
        assert_eq!(buckets.tracked(), 1);
        assert!(!buckets.allow(&busy, 10_500), "the busy key's bucket is kept, still empty");
    }

    #[test]
    fn zero_burst_allows_everything() {
        let mut buckets = TokenBuckets::new(0, 0);
        assert!((0..1000).all(|_| buckets.allow(&"P1", 0)));
    }
}
