//! Flood protection: a token bucket per pen. A pen sends about two messages a second while it
//! treats; a pen back from hours offline uploads its buffer in a burst. The burst allowance
//! covers such an upload; a pen that keeps sending far faster is flooding (broken firmware, a
//! loop, an attacker with its credentials), and the excess goes to the quarantine as
//! `rate_limited` instead of crowding out every other pen.

use penwarden_domain::rate::TokenBuckets;
use penwarden_domain::PenSerial;

/// `flood_burst` messages at once per pen, refilled at `flood_rate_per_s`; a zero burst
/// disables the guard.
pub(crate) type FloodGuard = TokenBuckets<PenSerial>;
