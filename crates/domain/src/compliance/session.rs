//! The rules that judge one session from its own facts: the cartridge (expiry, authenticity,
//! recall, wear), the depth used, and the pen's condition when the session started.

use ed25519_dalek::{Signature, VerifyingKey};

use super::thresholds::{firmware_at_least, Thresholds};
use super::{Judgement, Rule, SessionRef};
use crate::event::TreatmentArea;
use crate::udi::{Date, Udi};

/// What the registry knows of a cartridge lot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LotFacts {
    pub recalled: bool,
    /// The manufacturer's Ed25519 public key that signs the lot's cartridges.
    pub manufacturer_key: [u8; 32],
}

/// Everything the session rules look at. Fields unknown yet (the session has not ended, the
/// pen never reported status) are `None` and do not fire a rule.
#[derive(Debug, Clone)]
pub struct SessionFacts<'a> {
    pub session: SessionRef,
    pub started_unix_ms: i64,
    pub cartridge_udi: &'a str,
    pub cartridge_signature: &'a [u8],
    pub lot: Option<&'a LotFacts>,
    pub area: TreatmentArea,
    pub depth_setting_mm: f64,
    pub max_depth_mm: Option<f64>,
    pub operator_licence_level: Option<u8>,
    /// Motor run time and strokes recorded on this cartridge over all its sessions.
    pub cartridge_motor_seconds: f64,
    pub cartridge_strokes: u64,
    pub pen_motor_hours: Option<f64>,
    pub pen_firmware: Option<&'a str>,
}

/// The bytes a manufacturer signs: the element strings as read, in their order, in bracketed
/// form ([`Udi::signed_form`]), so the raw and printed forms of one cartridge verify alike and
/// nothing is re-printed (a day 00 stays 00). docs/protocol.md has worked examples.
pub fn signed_message(udi: &Udi) -> Vec<u8> {
    udi.signed_form().into_bytes()
}

/// Judges the six session rules; one judgement per rule, in a fixed order.
pub fn judge_session(facts: &SessionFacts<'_>, thresholds: &Thresholds) -> Vec<Judgement> {
    let udi = Udi::parse(facts.cartridge_udi);
    let judgement = |rule, explanation: Option<String>| Judgement {
        rule,
        session: facts.session.clone(),
        explanation,
        related: None,
    };
    vec![
        judgement(Rule::CartridgeUnverified, unverified(facts, udi.as_ref())),
        judgement(Rule::CartridgeExpired, udi.as_ref().ok().and_then(|udi| expired(facts, udi))),
        judgement(Rule::CartridgeRecalled, recalled(facts, udi.as_ref().ok())),
        judgement(Rule::CartridgeOveruse, overuse(facts, thresholds)),
        judgement(Rule::DepthLimit, depth(facts, thresholds)),
        judgement(Rule::PenServiceDue, service_due(facts, thresholds)),
    ]
}

/// Whether `bytes` can verify cartridge signatures: a 32-byte Ed25519 public key that is a point
/// on the curve and not of small order (a weak key would accept forged signatures).
pub fn check_manufacturer_key(bytes: &[u8]) -> Result<(), String> {
    let bytes: &[u8; 32] =
        bytes.try_into().map_err(|_| format!("public_key must be 32 bytes (Ed25519), got {}", bytes.len()))?;
    match VerifyingKey::from_bytes(bytes) {
        Ok(key) if !key.is_weak() => Ok(()),
        Ok(_) => Err("public_key is a weak Ed25519 key (of small order); it would verify forgeries".into()),
        Err(_) => Err("public_key is not an Ed25519 public key (not a point on the curve)".into()),
    }
}

fn unverified(facts: &SessionFacts<'_>, udi: Result<&Udi, &crate::udi::Error>) -> Option<String> {
    let udi = match udi {
        Ok(udi) => udi,
        Err(error) => return Some(format!("the cartridge's UDI {:?} does not parse: {error}", facts.cartridge_udi)),
    };
    let Some(lot) = facts.lot else {
        return Some(format!("lot {} of GTIN {} is not registered by any manufacturer", udi.lot, udi.gtin));
    };
    let Ok(key) = VerifyingKey::from_bytes(&lot.manufacturer_key) else {
        return Some(format!("the registered key of lot {} is not a valid Ed25519 key", udi.lot));
    };
    let Ok(signature) = Signature::from_slice(facts.cartridge_signature) else {
        return Some(format!(
            "cartridge {} carries no valid signature ({} bytes); it may be counterfeit",
            udi.serial,
            facts.cartridge_signature.len()
        ));
    };
    match key.verify_strict(&signed_message(udi), &signature) {
        Ok(()) => None,
        Err(_) => Some(format!(
            "the signature of cartridge {} does not verify against the manufacturer's key for lot {}; it may be counterfeit",
            udi.serial, udi.lot
        )),
    }
}

fn expired(facts: &SessionFacts<'_>, udi: &Udi) -> Option<String> {
    // The printed two-digit year is read in the century the session took place in.
    let expiry = udi.expiry_date(Date::from_unix_ms(facts.started_unix_ms).year);
    (facts.started_unix_ms >= expiry.end_unix_ms())
        .then(|| format!("the session started after the cartridge expired on {expiry} (lot {})", udi.lot))
}

fn recalled(facts: &SessionFacts<'_>, udi: Option<&Udi>) -> Option<String> {
    let lot = facts.lot?;
    lot.recalled.then(|| {
        let lot_name = udi.map_or("?", |udi| udi.lot.as_str());
        format!("lot {lot_name} of this cartridge has been recalled by its manufacturer")
    })
}

fn overuse(facts: &SessionFacts<'_>, thresholds: &Thresholds) -> Option<String> {
    if facts.cartridge_motor_seconds > thresholds.cartridge_max_motor_seconds {
        return Some(format!(
            "the cartridge has run {:.0} s of motor time, over its limit of {:.0} s",
            facts.cartridge_motor_seconds, thresholds.cartridge_max_motor_seconds
        ));
    }
    (facts.cartridge_strokes > thresholds.cartridge_max_strokes).then(|| {
        format!(
            "the cartridge has made {} strokes, over its limit of {}",
            facts.cartridge_strokes, thresholds.cartridge_max_strokes
        )
    })
}

fn depth(facts: &SessionFacts<'_>, thresholds: &Thresholds) -> Option<String> {
    let used = facts.max_depth_mm.unwrap_or(0.0).max(facts.depth_setting_mm);
    let area_limit = thresholds.area_depth_limits_mm.for_area(facts.area);
    // A small tolerance: depths come in 0.25 mm steps, floats do not.
    const TOLERANCE: f64 = 1e-6;
    if used > area_limit + TOLERANCE {
        return Some(format!("depth {used} mm exceeds the {area_limit} mm limit for the {} area", facts.area.as_str()));
    }
    let level = facts.operator_licence_level?;
    let licence_limit = thresholds.licence_depth_limits_mm.for_level(level)?;
    (used > licence_limit + TOLERANCE).then(|| {
        format!("depth {used} mm exceeds the {licence_limit} mm allowed to an operator of licence level {level}")
    })
}

fn service_due(facts: &SessionFacts<'_>, thresholds: &Thresholds) -> Option<String> {
    pen_service_due(facts.pen_motor_hours, facts.pen_firmware, thresholds)
}

/// Why a pen in this condition is due for service (motor hours past the service interval, or
/// firmware below the minimum supported), or `None`. Unknown motor hours or firmware (`None`,
/// or an empty firmware string) are not judged.
pub fn pen_service_due(motor_hours: Option<f64>, firmware: Option<&str>, thresholds: &Thresholds) -> Option<String> {
    if let Some(hours) = motor_hours {
        if hours > thresholds.service_interval_motor_hours {
            return Some(format!(
                "the pen has {hours:.1} motor hours, past its {:.0} h service interval",
                thresholds.service_interval_motor_hours
            ));
        }
    }
    let firmware = firmware.filter(|f| !f.is_empty())?;
    (!firmware_at_least(firmware, &thresholds.min_firmware))
        .then(|| format!("firmware {firmware} is below the minimum supported {}", thresholds.min_firmware))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pen_is_due_for_service_past_its_motor_hours_or_below_the_minimum_firmware() {
        let thresholds = Thresholds::default();
        assert_eq!(pen_service_due(Some(499.0), Some("2.4.1"), &thresholds), None);
        assert_eq!(pen_service_due(None, None, &thresholds), None, "unknown is not judged");
        assert_eq!(pen_service_due(Some(10.0), Some(""), &thresholds), None, "no firmware report yet");
        let hours = pen_service_due(Some(510.0), Some("2.4.1"), &thresholds).expect("due by motor hours");
        assert!(hours.contains("510.0 motor hours") && hours.contains("500 h"), "{hours}");
        let firmware = pen_service_due(Some(10.0), Some("1.9.0"), &thresholds).expect("due by firmware");
        assert!(firmware.contains("1.9.0") && firmware.contains("2.0.0"), "{firmware}");
    }
    use crate::ids::{PenSerial, SessionId};
    use crate::udi::Date;
    use ed25519_dalek::{Signer, SigningKey};

    const UDI: &str = "(01)09506000134352(17)301231(10)LOT1(21)C1";

    fn key() -> SigningKey {
        SigningKey::from_bytes(&[7u8; 32])
    }

    fn lot(recalled: bool) -> LotFacts {
        LotFacts { recalled, manufacturer_key: key().verifying_key().to_bytes() }
    }

    #[test]
    fn a_manufacturer_key_must_be_a_strong_ed25519_point() {
        assert_eq!(check_manufacturer_key(&key().verifying_key().to_bytes()), Ok(()));
        let mut not_a_point = [0u8; 32];
        not_a_point[0] = 2;
        assert!(check_manufacturer_key(&not_a_point).unwrap_err().contains("not a point on the curve"));
        let mut identity = [0u8; 32];
        identity[0] = 1;
        assert!(check_manufacturer_key(&identity).unwrap_err().contains("weak"));
        assert!(check_manufacturer_key(&[7u8; 31]).unwrap_err().contains("32 bytes"));
    }

    fn sign_udi(udi: &str) -> Vec<u8> {
        key().sign(&signed_message(&Udi::parse(udi).unwrap())).to_bytes().to_vec()
    }

    fn facts<'a>(lot: Option<&'a LotFacts>, signature: &'a [u8]) -> SessionFacts<'a> {
        SessionFacts {
            session: SessionRef { pen: PenSerial::parse("P1").unwrap(), session_id: SessionId::parse("s1").unwrap() },
            started_unix_ms: Date { year: 2030, month: 6, day: 1 }.days_since_epoch() * 86_400_000,
            cartridge_udi: UDI,
            cartridge_signature: signature,
            lot,
            area: TreatmentArea::Cheek,
            depth_setting_mm: 1.0,
            max_depth_mm: Some(1.0),
            operator_licence_level: Some(2),
            cartridge_motor_seconds: 600.0,
            cartridge_strokes: 72_000,
            pen_motor_hours: Some(10.0),
            pen_firmware: Some("2.4.1"),
        }
    }

    fn violated(facts: &SessionFacts<'_>) -> Vec<&'static str> {
        judge_session(facts, &Thresholds::default())
            .into_iter()
            .filter(|j| j.is_violation())
            .map(|j| j.rule.id())
            .collect()
    }

    #[test]
    fn a_genuine_cartridge_used_well_is_compliant() {
        let (lot, signature) = (lot(false), sign_udi(UDI));
        assert!(violated(&facts(Some(&lot), &signature)).is_empty());
    }

    #[test]
    fn a_day_00_expiry_verifies_over_the_element_strings_as_read() {
        // The manufacturer signs what it printed: "(17)300200", not a re-printed "(17)300228".
        let udi = "(01)09506000134352(17)300200(10)LOT1(21)C1";
        let signature = key().sign(udi.as_bytes()).to_bytes().to_vec();
        let lot = lot(false);
        let early = SessionFacts { cartridge_udi: udi, ..facts(Some(&lot), &signature) };
        let before_end = Date { year: 2030, month: 2, day: 28 }.days_since_epoch() * 86_400_000;
        assert!(violated(&SessionFacts { started_unix_ms: before_end, ..early.clone() }).is_empty());
        let after_end = Date { year: 2030, month: 3, day: 1 }.days_since_epoch() * 86_400_000;
        assert_eq!(violated(&SessionFacts { started_unix_ms: after_end, ..early }), ["CARTRIDGE_EXPIRED"]);
    }

    #[test]
    fn a_production_date_is_verified_with_the_rest() {
        let udi = "(01)09506000134352(11)290115(17)301231(10)LOT1(21)C1";
        let signature = key().sign(udi.as_bytes()).to_bytes().to_vec();
        let lot = lot(false);
        assert!(violated(&SessionFacts { cartridge_udi: udi, ..facts(Some(&lot), &signature) }).is_empty());
        // Signed without it, the UDI as read is not what was signed.
        let without = key().sign(UDI.as_bytes()).to_bytes().to_vec();
        let facts = SessionFacts { cartridge_udi: udi, ..facts(Some(&lot), &without) };
        assert_eq!(violated(&facts), ["CARTRIDGE_UNVERIFIED"]);
    }

    #[test]
    fn the_raw_form_verifies_like_the_printed_one() {
        let (lot, signature) = (lot(false), sign_udi(UDI));
        let raw = Udi::parse(UDI).unwrap().to_raw();
        let session = SessionFacts { cartridge_udi: &raw, ..facts(Some(&lot), &signature) };
        assert!(violated(&session).is_empty());
    }

    #[test]
    fn counterfeits_unknown_lots_and_garbage_are_unverified() {
        let (lot, signature) = (lot(false), sign_udi(UDI));
        let forged = SigningKey::from_bytes(&[9u8; 32]).sign(UDI.as_bytes()).to_bytes().to_vec();
        assert_eq!(violated(&facts(Some(&lot), &forged)), ["CARTRIDGE_UNVERIFIED"]);
        assert_eq!(violated(&facts(Some(&lot), &[])), ["CARTRIDGE_UNVERIFIED"]);
        assert_eq!(violated(&facts(None, &signature)), ["CARTRIDGE_UNVERIFIED"]);
        let garbage = SessionFacts { cartridge_udi: "not a udi", ..facts(Some(&lot), &signature) };
        assert_eq!(violated(&garbage), ["CARTRIDGE_UNVERIFIED"]);
        // A signature for another serial does not carry over.
        let other = sign_udi("(01)09506000134352(17)301231(10)LOT1(21)C2");
        assert_eq!(violated(&facts(Some(&lot), &other)), ["CARTRIDGE_UNVERIFIED"]);
    }

    #[test]
    fn expiry_recall_wear_depth_and_service() {
        let (genuine, recalled_lot, signature) = (lot(false), lot(true), sign_udi(UDI));
        let base = facts(Some(&genuine), &signature);
        let after_expiry = Date { year: 2031, month: 1, day: 1 }.days_since_epoch() * 86_400_000;
        assert_eq!(violated(&SessionFacts { started_unix_ms: after_expiry, ..base.clone() }), ["CARTRIDGE_EXPIRED"]);
        let last_day = Date { year: 2030, month: 12, day: 31 }.days_since_epoch() * 86_400_000 + 1;
        assert!(
            violated(&SessionFacts { started_unix_ms: last_day, ..base.clone() }).is_empty(),
            "valid through its last day"
        );
        assert_eq!(violated(&facts(Some(&recalled_lot), &signature)), ["CARTRIDGE_RECALLED"]);
        assert_eq!(violated(&SessionFacts { cartridge_motor_seconds: 1801.0, ..base.clone() }), ["CARTRIDGE_OVERUSE"]);
        assert_eq!(violated(&SessionFacts { cartridge_strokes: 216_001, ..base.clone() }), ["CARTRIDGE_OVERUSE"]);
        let eyes = SessionFacts { area: TreatmentArea::Periorbital, ..base.clone() };
        assert_eq!(violated(&eyes), ["DEPTH_LIMIT"]);
        let junior = SessionFacts {
            operator_licence_level: Some(1),
            depth_setting_mm: 0.5,
            max_depth_mm: Some(0.75),
            ..base.clone()
        };
        assert_eq!(violated(&junior), ["DEPTH_LIMIT"]);
        assert_eq!(violated(&SessionFacts { pen_motor_hours: Some(500.5), ..base.clone() }), ["PEN_SERVICE_DUE"]);
        assert_eq!(violated(&SessionFacts { pen_firmware: Some("1.9.0"), ..base.clone() }), ["PEN_SERVICE_DUE"]);
        let unknown = SessionFacts {
            pen_motor_hours: None,
            pen_firmware: None,
            max_depth_mm: None,
            operator_licence_level: None,
            ..base
        };
        assert!(violated(&unknown).is_empty(), "unknown facts fire nothing");
    }
}
