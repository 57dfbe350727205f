//! The compliance engine: rules as pure functions from facts to judgements.
//!
//! Every rule judges from device time and per-pen sequence numbers only, and each judgement
//! is a function of the whole set of facts, not of the order they arrived in: a pen that
//! uploads an hour late gets the same verdicts. When late facts change a judgement, the store
//! records the change (a violation raised or retracted), never a silent rewrite.

mod disinfection;
mod gap;
mod reuse;
mod session;
mod thresholds;

pub use disinfection::{judge_disinfection, readiness, NotReady, PenFact, PenFactKind};
pub use gap::{judge_telemetry_gap, SessionSpan};
pub use reuse::{judge_cartridge_reuse, CartridgeUse};
pub use session::{check_manufacturer_key, judge_session, pen_service_due, signed_message, LotFacts, SessionFacts};
pub use thresholds::{firmware_at_least, AreaDepthLimits, LicenceDepthLimits, Thresholds};

use std::fmt;

use crate::ids::{PenSerial, SessionId};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Severity {
    Critical,
    Major,
    Minor,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Critical => "critical",
            Self::Major => "major",
            Self::Minor => "minor",
        }
    }
}

/// The rules of the compliance record. Ids are stable: they are stored and queried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Rule {
    CartridgeReuse,
    CartridgeExpired,
    CartridgeRecalled,
    CartridgeUnverified,
    CartridgeOveruse,
    PenNotDisinfected,
    DepthLimit,
    PenServiceDue,
    TelemetryGap,
}

impl Rule {
    pub const ALL: [Rule; 9] = [
        Rule::CartridgeReuse,
        Rule::CartridgeExpired,
        Rule::CartridgeRecalled,
        Rule::CartridgeUnverified,
        Rule::CartridgeOveruse,
        Rule::PenNotDisinfected,
        Rule::DepthLimit,
        Rule::PenServiceDue,
        Rule::TelemetryGap,
    ];

    pub fn id(self) -> &'static str {
        match self {
            Self::CartridgeReuse => "CARTRIDGE_REUSE",
            Self::CartridgeExpired => "CARTRIDGE_EXPIRED",
            Self::CartridgeRecalled => "CARTRIDGE_RECALLED",
            Self::CartridgeUnverified => "CARTRIDGE_UNVERIFIED",
            Self::CartridgeOveruse => "CARTRIDGE_OVERUSE",
            Self::PenNotDisinfected => "PEN_NOT_DISINFECTED",
            Self::DepthLimit => "DEPTH_LIMIT",
            Self::PenServiceDue => "PEN_SERVICE_DUE",
            Self::TelemetryGap => "TELEMETRY_GAP",
        }
    }

    pub fn severity(self) -> Severity {
        match self {
            Self::CartridgeReuse
            | Self::CartridgeExpired
            | Self::CartridgeRecalled
            | Self::CartridgeUnverified
            | Self::PenNotDisinfected => Severity::Critical,
            Self::CartridgeOveruse | Self::DepthLimit => Severity::Major,
            Self::PenServiceDue | Self::TelemetryGap => Severity::Minor,
        }
    }

    /// The explanation of a violation for a reader who may not see the session it names:
    /// what happened, without where, when or on which pen.
    pub fn explanation_without_related(self) -> &'static str {
        match self {
            Self::CartridgeReuse => {
                "cartridge was already used elsewhere, in a session outside what this key may see; a cartridge is single-use"
            }
            Self::PenNotDisinfected => {
                "no disinfection with sheath change was logged on this pen between its previous session (outside what this key may see) and this session"
            }
            _ => "this violation involves a session outside what this key may see",
        }
    }

    pub fn from_id(id: &str) -> Option<Rule> {
        Self::ALL.into_iter().find(|rule| rule.id() == id)
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.id())
    }
}

/// A session, as rules name it: sessions are unique per pen.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SessionRef {
    pub pen: PenSerial,
    pub session_id: SessionId,
}

/// A rule's judgement of one session: `explanation` is `Some` when the rule is violated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judgement {
    pub rule: Rule,
    pub session: SessionRef,
    pub explanation: Option<String>,
    /// Another session the explanation names (the first use of a reused cartridge, a pen's
    /// previous session). It may belong to another tenant: whoever may not see it reads
    /// [`Rule::explanation_without_related`] instead.
    pub related: Option<SessionRef>,
}

impl Judgement {
    pub fn is_violation(&self) -> bool {
        self.explanation.is_some()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Compliant,
    NonCompliant,
    /// The session has not ended, its start is missing, or messages inside it never arrived
    /// (TELEMETRY_GAP alone): the evidence is not complete enough to call it compliant.
    Incomplete,
}

/// A session's verdict from what is known of it and its active violations. A telemetry gap
/// alone does not make a session non-compliant: it makes its evidence incomplete.
pub fn session_verdict(started: bool, ended: bool, violated: &[Rule]) -> Verdict {
    if violated.iter().any(|rule| *rule != Rule::TelemetryGap) {
        Verdict::NonCompliant
    } else if started && ended && violated.is_empty() {
        Verdict::Compliant
    } else {
        Verdict::Incomplete
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_ids_round_trip_and_are_unique() {
        for rule in Rule::ALL {
            assert_eq!(Rule::from_id(rule.id()), Some(rule));
        }
        let mut ids: Vec<_> = Rule::ALL.iter().map(|r| r.id()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 9);
        assert_eq!(Rule::from_id("NOPE"), None);
    }

    #[test]
    fn verdicts() {
        assert_eq!(session_verdict(true, true, &[]), Verdict::Compliant);
        assert_eq!(session_verdict(true, false, &[]), Verdict::Incomplete);
        assert_eq!(session_verdict(true, false, &[Rule::DepthLimit]), Verdict::NonCompliant);
        assert_eq!(session_verdict(false, true, &[]), Verdict::Incomplete);
        assert_eq!(session_verdict(true, true, &[Rule::TelemetryGap]), Verdict::Incomplete);
        assert_eq!(session_verdict(true, true, &[Rule::TelemetryGap, Rule::CartridgeReuse]), Verdict::NonCompliant);
    }
}
