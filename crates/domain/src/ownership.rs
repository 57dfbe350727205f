//! Who may change what: every relation in the record has an owner who alone may change it.
//!
//! Reads are narrowed by a [`Scope`]; writes need more, because a write can reach into another
//! tenant's records without reading them: a chain re-registering another chain's operator
//! changes that chain's DEPTH_LIMIT verdicts, a manufacturer registering a lot under another
//! manufacturer's GTIN locks the owner out of it. These rules are pure; the API looks up the
//! current holders and asks here.

use crate::access::Scope;

/// A refused change: the request field that reaches beyond the caller's own records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused(pub &'static str);

/// Who holds a pen now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PenHolders<'a> {
    /// The manufacturer whose keys see the pen wherever it is used.
    pub manufacturer: Option<&'a str>,
    /// The clinic it is placed in, and that clinic's chain.
    pub clinic: Option<&'a str>,
    pub chain: Option<&'a str>,
}

/// Whether `scope` may register a pen as `requested` (the clinic asked for and its chain, the
/// manufacturer named), the pen being held by `existing` (None: a new pen).
///
/// - A chain places pens in its own clinics: a new pen, an unplaced one, or one of its own. It
///   cannot name or change a pen's manufacturer (that would show the pen to that manufacturer).
/// - A manufacturer registers its own pens and keeps them up to date. Placing a pen in a
///   clinic is the chain's act, so it registers new pens unplaced and cannot move one; a pen
///   someone else holds, or one without a manufacturer, is not its to claim.
/// - An admin may do anything; a clinic nothing.
pub fn check_pen_registration(
    scope: &Scope,
    existing: Option<PenHolders<'_>>,
    requested: PenHolders<'_>,
) -> Result<(), Refused> {
    match scope {
        Scope::All => Ok(()),
        Scope::Clinic(_) => Err(Refused("RegisterPen")),
        Scope::Chain(own) => {
            if requested.clinic.is_none() {
                return Err(Refused("a pen without clinic_id"));
            }
            if requested.chain != Some(own.as_str()) {
                return Err(Refused("clinic_id"));
            }
            let current = existing.unwrap_or_default();
            if current.chain.is_some_and(|chain| chain != own.as_str()) {
                return Err(Refused("pen_serial"));
            }
            if requested.manufacturer.is_some() && requested.manufacturer != current.manufacturer {
                return Err(Refused("manufacturer_id"));
            }
            Ok(())
        }
        Scope::Manufacturer(own) => {
            if requested.manufacturer.is_some_and(|manufacturer| manufacturer != own) {
                return Err(Refused("manufacturer_id"));
            }
            match existing {
                None if requested.clinic.is_some() => Err(Refused("clinic_id")),
                None => Ok(()),
                Some(current) if current.manufacturer != Some(own.as_str()) => Err(Refused("pen_serial")),
                Some(current) if current.clinic != requested.clinic => Err(Refused("clinic_id")),
                Some(_) => Ok(()),
            }
        }
    }
}

/// Whether `scope` may register (or change the licence of) an operator whose current owner is
/// `existing`: None for a new operator, Some(None) for one an admin registered, Some(Some(c))
/// for chain c's. A chain changes only its own operators; an admin's are changed by admins.
pub fn check_operator_registration(scope: &Scope, existing: Option<Option<&str>>) -> Result<(), Refused> {
    match (scope, existing) {
        (Scope::All, _) => Ok(()),
        (Scope::Chain(_), None) => Ok(()),
        (Scope::Chain(own), Some(Some(owner))) if owner == own.as_str() => Ok(()),
        (Scope::Chain(_), Some(_)) => Err(Refused("operator_id")),
        _ => Err(Refused("RegisterOperator")),
    }
}

/// A GTIN or a GS1 company prefix, as assigned to a manufacturer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GtinAssignment {
    /// 14 digits (one GTIN) or 4 to 12 digits (a company prefix: every GTIN whose digits after
    /// the indicator digit begin with it).
    pub prefix: String,
    pub manufacturer: String,
}

/// What an assignment's prefix must be.
pub fn check_gtin_prefix(prefix: &str) -> Result<(), String> {
    let digits = prefix.bytes().all(|b| b.is_ascii_digit());
    match prefix.len() {
        14 if digits => crate::udi::validate_gtin(prefix).map_err(|e| e.to_string()),
        4..=12 if digits => Ok(()),
        _ => Err(format!(
            "{prefix:?} is neither a GTIN-14 nor a GS1 company prefix (4 to 12 digits, as it follows the indicator digit)"
        )),
    }
}

impl GtinAssignment {
    /// Whether this assignment covers `gtin` (a valid GTIN-14).
    pub fn covers(&self, gtin: &str) -> bool {
        if self.prefix.len() == 14 {
            self.prefix == gtin
        } else {
            gtin.get(1..).is_some_and(|rest| rest.starts_with(&self.prefix))
        }
    }

    /// Whether the two cover a GTIN in common (one prefix extends the other).
    pub fn overlaps(&self, other: &GtinAssignment) -> bool {
        let digits =
            |a: &GtinAssignment| if a.prefix.len() == 14 { a.prefix[1..13].to_owned() } else { a.prefix.clone() };
        let (mine, theirs) = (digits(self), digits(other));
        if self.prefix.len() == 14 && other.prefix.len() == 14 {
            return self.prefix == other.prefix;
        }
        mine.starts_with(&theirs) || theirs.starts_with(&mine)
    }
}

/// The manufacturer a GTIN belongs to, among the assignments given (assignments never
/// overlap across manufacturers, so the first that covers it answers).
pub fn gtin_holder<'a>(gtin: &str, assignments: &'a [GtinAssignment]) -> Option<&'a str> {
    assignments.iter().find(|a| a.covers(gtin)).map(|a| a.manufacturer.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::Role;

    fn scope(role: Role, id: &str) -> Scope {
        Scope::new(role, id).unwrap()
    }

    fn holders<'a>(manufacturer: Option<&'a str>, clinic: Option<&'a str>, chain: Option<&'a str>) -> PenHolders<'a> {
        PenHolders { manufacturer, clinic, chain }
    }

    #[test]
    fn a_chain_places_pens_in_its_own_clinics_and_never_names_their_maker() {
        let chain_a = scope(Role::Chain, "chain-a");
        let into_a1 = holders(None, Some("a1"), Some("chain-a"));
        assert_eq!(check_pen_registration(&chain_a, None, into_a1), Ok(()));
        // An unplaced pen of a manufacturer, and its own pen moved between its clinics.
        let unplaced = holders(Some("maker"), None, None);
        assert_eq!(check_pen_registration(&chain_a, Some(unplaced), into_a1), Ok(()));
        let in_a2 = holders(Some("maker"), Some("a2"), Some("chain-a"));
        assert_eq!(check_pen_registration(&chain_a, Some(in_a2), into_a1), Ok(()));
        // Naming the manufacturer it already has changes nothing.
        let same_maker = holders(Some("maker"), Some("a1"), Some("chain-a"));
        assert_eq!(check_pen_registration(&chain_a, Some(in_a2), same_maker), Ok(()));

        let in_b1 = holders(Some("maker"), Some("b1"), Some("chain-b"));
        assert_eq!(check_pen_registration(&chain_a, Some(in_b1), into_a1), Err(Refused("pen_serial")));
        let into_b1 = holders(None, Some("b1"), Some("chain-b"));
        assert_eq!(check_pen_registration(&chain_a, None, into_b1), Err(Refused("clinic_id")));
        assert_eq!(
            check_pen_registration(&chain_a, None, PenHolders::default()),
            Err(Refused("a pen without clinic_id"))
        );
        let other_maker = holders(Some("rival"), Some("a1"), Some("chain-a"));
        assert_eq!(check_pen_registration(&chain_a, Some(in_a2), other_maker), Err(Refused("manufacturer_id")));
        assert_eq!(check_pen_registration(&chain_a, None, other_maker), Err(Refused("manufacturer_id")));
    }

    #[test]
    fn a_manufacturer_registers_its_own_pens_unplaced_and_claims_no_one_elses() {
        let maker = scope(Role::Manufacturer, "maker");
        let new_own = holders(Some("maker"), None, None);
        assert_eq!(check_pen_registration(&maker, None, new_own), Ok(()));
        // Its pen, placed by a chain: updated where it is.
        let in_a1 = holders(Some("maker"), Some("a1"), Some("chain-a"));
        assert_eq!(check_pen_registration(&maker, Some(in_a1), in_a1), Ok(()));

        let placed_new = holders(Some("maker"), Some("a1"), Some("chain-a"));
        assert_eq!(check_pen_registration(&maker, None, placed_new), Err(Refused("clinic_id")));
        assert_eq!(check_pen_registration(&maker, Some(in_a1), new_own), Err(Refused("clinic_id")));
        let own_unplaced = holders(Some("maker"), None, None);
        assert_eq!(check_pen_registration(&maker, Some(own_unplaced), in_a1), Err(Refused("clinic_id")));
        // Pens without a manufacturer, or with another one, placed or not.
        for holder in
            [holders(None, Some("b1"), Some("chain-b")), holders(None, None, None), holders(Some("rival"), None, None)]
        {
            let request = holders(Some("maker"), holder.clinic, holder.chain);
            assert_eq!(check_pen_registration(&maker, Some(holder), request), Err(Refused("pen_serial")));
        }
        let for_rival = holders(Some("rival"), None, None);
        assert_eq!(check_pen_registration(&maker, None, for_rival), Err(Refused("manufacturer_id")));
        assert_eq!(check_pen_registration(&scope(Role::Clinic, "a1"), None, in_a1), Err(Refused("RegisterPen")));
        assert_eq!(check_pen_registration(&Scope::All, Some(in_a1), for_rival), Ok(()));
    }

    #[test]
    fn operators_are_changed_by_their_owner_only() {
        let chain_a = scope(Role::Chain, "chain-a");
        assert_eq!(check_operator_registration(&chain_a, None), Ok(()));
        assert_eq!(check_operator_registration(&chain_a, Some(Some("chain-a"))), Ok(()));
        assert_eq!(check_operator_registration(&chain_a, Some(Some("chain-b"))), Err(Refused("operator_id")));
        assert_eq!(check_operator_registration(&chain_a, Some(None)), Err(Refused("operator_id")));
        assert_eq!(check_operator_registration(&Scope::All, Some(Some("chain-b"))), Ok(()));
        let maker = scope(Role::Manufacturer, "maker");
        assert_eq!(check_operator_registration(&maker, None), Err(Refused("RegisterOperator")));
    }

    #[test]
    fn gtins_belong_to_whoever_holds_them_or_their_company_prefix() {
        let assignment = |prefix: &str, manufacturer: &str| GtinAssignment {
            prefix: prefix.into(),
            manufacturer: manufacturer.into(),
        };
        let assignments = [assignment("9506000", "maker"), assignment("07032069804988", "norway")];
        assert_eq!(gtin_holder("09506000134352", &assignments), Some("maker"));
        assert_eq!(gtin_holder("19506000134359", &assignments), Some("maker"), "any indicator digit");
        assert_eq!(gtin_holder("07032069804988", &assignments), Some("norway"));
        assert_eq!(gtin_holder("07032069804995", &assignments), None);
        assert!(assignment("950600", "x").overlaps(&assignments[0]));
        assert!(assignment("95060001", "x").overlaps(&assignments[0]));
        assert!(assignment("09506000134352", "x").overlaps(&assignments[0]));
        assert!(!assignment("950601", "x").overlaps(&assignments[0]));
        assert!(!assignment("07032069804995", "x").overlaps(&assignments[1]));
        assert_eq!(check_gtin_prefix("9506000"), Ok(()));
        assert_eq!(check_gtin_prefix("09506000134352"), Ok(()));
        assert!(check_gtin_prefix("09506000134353").is_err(), "bad check digit");
        assert!(check_gtin_prefix("950").is_err());
        assert!(check_gtin_prefix("95060001343520").is_err());
        assert!(check_gtin_prefix("95O6000").is_err());
    }
}
