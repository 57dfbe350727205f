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
}

impl FloodGuard {
    /// `burst` messages at once, refilled at `rate_per_s`. A zero burst disables the guard.
    pub(crate) fn new(burst: u32, rate_per_s: u32) -> FloodGuard {
        FloodGuard { burst: f64::from(burst), rate_per_ms: f64::from(rate_per_s) / 1000.0, buckets: HashMap::new() }
    }

    /// Takes a token for one message from `pen` at `now_ms`; false when the pen is flooding.
    pub(crate) fn allow(&mut self, pen: &PenSerial, now_ms: i64) -> bool {
        if self.burst <= 0.0 {
            return true;
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
    fn zero_burst_disables() {
        let mut guard = FloodGuard::new(0, 0);
        let pen = PenSerial::parse("P1").unwrap();
        assert!((0..1000).all(|_| guard.allow(&pen, 0)));
    }
}
