//! `--inject reuse=0.05,no-disinfect=0.05,...`: probabilities of breaking each rule.
//!
//! The cartridge injections (reuse, expired, recalled, counterfeit, overuse, depth, gap) are
//! exclusive: a session gets at most one, drawn once, so every session breaks a predictable
//! set of rules and the summary can count them exactly. `no-disinfect` is drawn per session on
//! its own (it concerns the pen, not the cartridge) and `service-due` once per pen (every
//! session of such a pen is then due). Reuse only picks cartridges whose first session broke
//! no rule, so a reused cartridge does not also carry another finding.

use std::str::FromStr;

/// What one session does wrong with its cartridge, depth or telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SessionFault {
    /// A cartridge another session already used.
    Reuse,
    /// A cartridge of the expired lot.
    Expired,
    /// A cartridge of the lot pensim recalls at the end of its run.
    Recalled,
    /// A cartridge signed by a key that is not the manufacturer's.
    Counterfeit,
    /// A session that runs its fresh cartridge past its motor-time limit.
    Overuse,
    /// Periorbital treatment at 1.0 mm (limit 0.5 mm).
    Depth,
    /// One telemetry message of the session is never published.
    Gap,
}

impl SessionFault {
    pub(crate) const ALL: [SessionFault; 7] = [
        SessionFault::Reuse,
        SessionFault::Expired,
        SessionFault::Recalled,
        SessionFault::Counterfeit,
        SessionFault::Overuse,
        SessionFault::Depth,
        SessionFault::Gap,
    ];

    /// The rule penwarden must flag the session with.
    pub(crate) fn rule(self) -> &'static str {
        match self {
            SessionFault::Reuse => "CARTRIDGE_REUSE",
            SessionFault::Expired => "CARTRIDGE_EXPIRED",
            SessionFault::Recalled => "CARTRIDGE_RECALLED",
            SessionFault::Counterfeit => "CARTRIDGE_UNVERIFIED",
            SessionFault::Overuse => "CARTRIDGE_OVERUSE",
            SessionFault::Depth => "DEPTH_LIMIT",
            SessionFault::Gap => "TELEMETRY_GAP",
        }
    }

    fn name(self) -> &'static str {
        match self {
            SessionFault::Reuse => "reuse",
            SessionFault::Expired => "expired",
            SessionFault::Recalled => "recalled",
            SessionFault::Counterfeit => "counterfeit",
            SessionFault::Overuse => "overuse",
            SessionFault::Depth => "depth",
            SessionFault::Gap => "gap",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Injection {
    /// Per session, the probability of each exclusive fault (summing to at most 1).
    pub(crate) session_faults: Vec<(SessionFault, f64)>,
    /// Probability that a pen skips disinfection before a session (not before its first).
    pub(crate) no_disinfect: f64,
    /// Probability that a pen is past its service interval for the whole run.
    pub(crate) service_due: f64,
}

impl Injection {
    /// The fault for a session, from one uniform draw in 0..1.
    pub(crate) fn session_fault(&self, draw: f64) -> Option<SessionFault> {
        let mut threshold = 0.0;
        for (fault, probability) in &self.session_faults {
            threshold += probability;
            if draw < threshold {
                return Some(*fault);
            }
        }
        None
    }

    pub(crate) fn wants(&self, fault: SessionFault) -> bool {
        self.session_faults.iter().any(|(f, p)| *f == fault && *p > 0.0)
    }
}

const KNOWN: &str = "reuse, expired, recalled, counterfeit, overuse, depth, gap, no-disinfect, service-due";

impl FromStr for Injection {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut injection = Injection::default();
        for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, value) = part.split_once('=').ok_or_else(|| format!("{part:?}: expected name=probability"))?;
            let probability: f64 = value.parse().map_err(|_| format!("{part:?}: {value:?} is not a number"))?;
            if !(0.0..=1.0).contains(&probability) {
                return Err(format!("{part:?}: probability must be within 0..=1"));
            }
            match name {
                "no-disinfect" => injection.no_disinfect = probability,
                "service-due" => injection.service_due = probability,
                other => {
                    let fault = SessionFault::ALL
                        .into_iter()
                        .find(|fault| fault.name() == other)
                        .ok_or_else(|| format!("unknown injection {other:?}; known: {KNOWN}"))?;
                    injection.session_faults.retain(|(f, _)| *f != fault);
                    injection.session_faults.push((fault, probability));
                }
            }
        }
        let total: f64 = injection.session_faults.iter().map(|(_, p)| p).sum();
        if total > 1.0 + 1e-9 {
            return Err(format!(
                "the session injections ({}) sum to {total}; at most 1, since a session gets at most one",
                SessionFault::ALL.map(SessionFault::name).join(", ")
            ));
        }
        Ok(injection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_form() {
        let injection: Injection = "reuse=0.05, no-disinfect=0.1, gap=0.2, service-due=0.5".parse().unwrap();
        assert_eq!(injection.session_faults, [(SessionFault::Reuse, 0.05), (SessionFault::Gap, 0.2)]);
        assert_eq!((injection.no_disinfect, injection.service_due), (0.1, 0.5));
        assert_eq!("".parse::<Injection>().unwrap(), Injection::default());
        assert!("reuse=2".parse::<Injection>().is_err());
        assert!("nope=0.1".parse::<Injection>().is_err());
        assert!("reuse".parse::<Injection>().is_err());
        assert!("reuse=0.6,depth=0.6".parse::<Injection>().is_err(), "exclusive faults cannot sum past 1");
    }

    #[test]
    fn one_draw_picks_at_most_one_fault() {
        let injection: Injection = "reuse=0.25,depth=0.25".parse().unwrap();
        assert_eq!(injection.session_fault(0.1), Some(SessionFault::Reuse));
        assert_eq!(injection.session_fault(0.3), Some(SessionFault::Depth));
        assert_eq!(injection.session_fault(0.6), None);
        assert!(injection.wants(SessionFault::Depth) && !injection.wants(SessionFault::Gap));
    }
}
