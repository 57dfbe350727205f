//! Flood protection: a token bucket per pen. A pen sends about two messages a second while it
//! treats; a pen back from hours offline uploads its buffer in a burst. The burst allowance
//! covers such an upload; a pen that keeps sending far faster is flooding (broken firmware, a
//! loop, an attacker with its credentials), and the excess goes to the quarantine as
//! `rate_limited` instead of crowding out every other pen.

use std::collections::HashMap;

use penwarden_domain::PenSerial;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated_ms: i64,
}

#[derive(Debug)]
pub(crate) struct FloodGuard {
    burst: f64,
    rate_per_ms: f64,
    buckets: HashMap<PenSerial, Bucket>,
    last_pruned_ms: i64,
}

/// How often buckets that have refilled are forgotten.
const PRUNE_INTERVAL_MS: i64 = 10_000;

impl FloodGuard {
    /// `burst` messages at once, refilled at `rate_per_s`. A zero burst disables the guard.
    pub(crate) fn new(burst: u32, rate_per_s: u32) -> FloodGuard {
        FloodGuard {
            burst: f64::from(burst),
            rate_per_ms: f64::from(rate_per_s) / 1000.0,
            buckets: HashMap::new(),
            last_pruned_ms: 0,
        }
    }

    /// Takes a token for one message from `pen` at `now_ms`; false when the pen is flooding.
    pub(crate) fn allow(&mut self, pen: &PenSerial, now_ms: i64) -> bool {
        if self.burst <= 0.0 {
            return true;
        }
        if now_ms - self.last_pruned_ms >= PRUNE_INTERVAL_MS {
            self.prune(now_ms);
        }
        if !self.buckets.contains_key(pen) {
            // Cloning the serial only for a pen's first message keeps the hot path allocation-free.
            self.buckets.insert(pen.clone(), Bucket { tokens: self.burst, updated_ms: now_ms });
        }
        let burst = self.burst;
        let Some(bucket) = self.buckets.get_mut(pen) else { return true };
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
}

impl FloodGuard {
    /// Forgets the buckets that have refilled: a full bucket is what a pen not heard of gets, so
    /// the map holds only pens that sent in the last `burst / rate` seconds.
    fn prune(&mut self, now_ms: i64) {
        let (burst, rate_per_ms) = (self.burst, self.rate_per_ms);
        self.buckets
            .retain(|_, bucket| bucket.tokens + (now_ms - bucket.updated_ms).max(0) as f64 * rate_per_ms < burst);
        self.last_pruned_ms = now_ms;
    }

    #[cfg(test)]
    fn buckets(&self) -> usize {
        self.buckets.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_then_the_rate() {
        let pen = PenSerial::parse("P1").unwrap();
        let other = PenSerial::parse("P2").unwrap();
        let mut guard = FloodGuard::new(5, 10);
        assert_eq!((0..8).filter(|_| guard.allow(&pen, 0)).count(), 5);
        assert!(guard.allow(&other, 0), "one pen's flood does not limit another");
        assert!(!guard.allow(&pen, 50), "half a token after 50 ms");
        assert!(guard.allow(&pen, 100), "a token per 100 ms at 10/s");
        assert_eq!((0..20).filter(|_| guard.allow(&pen, 10_000)).count(), 5, "refill stops at the burst");
    }

    #[test]
    fn refilled_buckets_are_forgotten() {
        let mut guard = FloodGuard::new(5, 10);
        for i in 0..1000 {
            guard.allow(&PenSerial::parse(&format!("P{i}")).unwrap(), 1);
        }
        let busy = PenSerial::parse("BUSY").unwrap();
        for _ in 0..5 {
            guard.allow(&busy, 10_500);
        }
        // At 10.5 s every bucket of the first thousand pens has refilled (0.5 s per token).
        assert_eq!(guard.buckets(), 1);
        assert!(!guard.allow(&busy, 10_500), "the busy pen's bucket is kept, still empty");
    }

    #[test]
    fn zero_burst_disables() {
        let mut guard = FloodGuard::new(0, 0);
        let pen = PenSerial::parse("P1").unwrap();
        assert!((0..1000).all(|_| guard.allow(&pen, 0)));
    }
}
