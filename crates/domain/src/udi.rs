//! GS1 UDI element strings as printed on cartridge boxes and stored on their chips.
//!
//! Two forms are accepted: human-readable, `(01)09506000134352(17)271231(10)LOT42(21)S0001`,
//! and raw, where AIs follow each other and a variable-length field ends at a GS (0x1D) byte
//! or at the end of the string. Only the AIs a cartridge carries are understood: 01 (GTIN-14,
//! check digit verified), 17 (expiry YYMMDD), 10 (lot) and 21 (serial).

use std::fmt;

/// The ASCII group separator that ends a variable-length field in the raw form.
pub const GROUP_SEPARATOR: char = '\u{1d}';
const MAX_VARIABLE_LEN: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("UDI is empty")]
    Empty,
    #[error("unsupported application identifier ({0})")]
    UnsupportedAi(String),
    #[error("application identifier ({0}) appears twice")]
    DuplicateAi(&'static str),
    #[error("missing application identifier ({0})")]
    MissingAi(&'static str),
    #[error("GTIN must be 14 digits, got {0:?}")]
    GtinFormat(String),
    #[error("GTIN {gtin} has check digit {found}, expected {expected}")]
    GtinCheckDigit { gtin: String, found: u8, expected: u8 },
    #[error("expiry must be YYMMDD, got {0:?}")]
    ExpiryFormat(String),
    #[error("({ai}) must be 1 to 20 printable characters, got {value:?}")]
    VariableField { ai: &'static str, value: String },
    #[error("unbalanced parentheses in human-readable UDI")]
    Parentheses,
}

/// A calendar date (UTC), enough for expiry checks without a date library in the domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Date {
    pub year: u16,
    pub month: u8,
    pub day: u8,
}

impl Date {
    /// Days since 1970-01-01 (proleptic Gregorian), for comparing with device time.
    pub fn days_since_epoch(self) -> i64 {
        // Howard Hinnant's days_from_civil.
        let y = i64::from(self.year) - i64::from(self.month <= 2);
        let era = y.div_euclid(400);
        let yoe = y - era * 400;
        let m = i64::from(self.month);
        let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(self.day) - 1;
        let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
        era * 146_097 + doe - 719_468
    }

    /// The first millisecond after this date ends (UTC).
    pub fn end_unix_ms(self) -> i64 {
        (self.days_since_epoch() + 1) * 86_400_000
    }
}

impl fmt::Display for Date {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

fn days_in_month(year: u16, month: u8) -> u8 {
    match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (year.is_multiple_of(4) && !year.is_multiple_of(100)) || year.is_multiple_of(400) => 29,
        _ => 28,
    }
}

/// What identifies one physical cartridge: its product (GTIN) and its serial within it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CartridgeKey {
    pub gtin: String,
    pub serial: String,
}

impl fmt::Display for CartridgeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.gtin, self.serial)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Udi {
    pub gtin: String,
    pub expiry: Date,
    pub lot: String,
    pub serial: String,
}

impl Udi {
    pub fn key(&self) -> CartridgeKey {
        CartridgeKey { gtin: self.gtin.clone(), serial: self.serial.clone() }
    }

    /// Parses either form; see the module docs.
    pub fn parse(text: &str) -> Result<Self, Error> {
        let text = text.trim();
        if text.is_empty() {
            return Err(Error::Empty);
        }
        let fields = if text.starts_with('(') { split_human_readable(text)? } else { split_raw(text)? };
        let mut gtin = None;
        let mut expiry = None;
        let mut lot = None;
        let mut serial = None;
        for (ai, value) in fields {
            let (slot, name): (&mut Option<String>, &'static str) = match ai.as_str() {
                "01" => (&mut gtin, "01"),
                "17" => (&mut expiry, "17"),
                "10" => (&mut lot, "10"),
                "21" => (&mut serial, "21"),
                _ => return Err(Error::UnsupportedAi(ai)),
            };
            if slot.replace(value).is_some() {
                return Err(Error::DuplicateAi(name));
            }
        }
        let gtin = validate_gtin(gtin.ok_or(Error::MissingAi("01"))?)?;
        let expiry = parse_expiry(&expiry.ok_or(Error::MissingAi("17"))?)?;
        let lot = validate_variable("10", lot.ok_or(Error::MissingAi("10"))?)?;
        let serial = validate_variable("21", serial.ok_or(Error::MissingAi("21"))?)?;
        Ok(Udi { gtin, expiry, lot, serial })
    }

    /// The human-readable form, which is also the canonical form signatures cover.
    pub fn to_human_readable(&self) -> String {
        format!(
            "(01){}(17){:02}{:02}{:02}(10){}(21){}",
            self.gtin,
            self.expiry.year % 100,
            self.expiry.month,
            self.expiry.day,
            self.lot,
            self.serial
        )
    }

    /// The raw form: fixed-length AIs first, a GS after the lot (variable length).
    pub fn to_raw(&self) -> String {
        format!(
            "01{}17{:02}{:02}{:02}10{}{GROUP_SEPARATOR}21{}",
            self.gtin,
            self.expiry.year % 100,
            self.expiry.month,
            self.expiry.day,
            self.lot,
            self.serial
        )
    }
}

fn split_human_readable(text: &str) -> Result<Vec<(String, String)>, Error> {
    let mut fields = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let after_open = rest.strip_prefix('(').ok_or(Error::Parentheses)?;
        let close = after_open.find(')').ok_or(Error::Parentheses)?;
        let ai = &after_open[..close];
        let after_ai = &after_open[close + 1..];
        let end = after_ai.find('(').unwrap_or(after_ai.len());
        let value = &after_ai[..end];
        if value.contains(')') {
            return Err(Error::Parentheses);
        }
        fields.push((ai.to_owned(), value.to_owned()));
        rest = &after_ai[end..];
    }
    Ok(fields)
}

fn split_raw(text: &str) -> Result<Vec<(String, String)>, Error> {
    let mut fields = Vec::new();
    let mut rest = text.trim_start_matches(GROUP_SEPARATOR);
    while !rest.is_empty() {
        let ai = rest.get(..2).ok_or_else(|| Error::UnsupportedAi(rest.to_owned()))?;
        let body = &rest[2..];
        let fixed_len = match ai {
            "01" => Some(14),
            "17" => Some(6),
            "10" | "21" => None,
            other => return Err(Error::UnsupportedAi(other.to_owned())),
        };
        let (value, next) = match fixed_len {
            Some(len) => {
                let value = body.get(..len).unwrap_or(body);
                (value, &body[value.len()..])
            }
            None => {
                let end = body.find(GROUP_SEPARATOR).unwrap_or(body.len());
                (&body[..end], &body[end..])
            }
        };
        fields.push((ai.to_owned(), value.to_owned()));
        rest = next.trim_start_matches(GROUP_SEPARATOR);
    }
    Ok(fields)
}

/// The GS1 mod-10 check digit over the first 13 digits of a GTIN-14.
pub fn gtin_check_digit(first_13: &[u8]) -> u8 {
    let sum: u32 =
        first_13.iter().rev().enumerate().map(|(i, d)| u32::from(d - b'0') * if i % 2 == 0 { 3 } else { 1 }).sum();
    ((10 - sum % 10) % 10) as u8
}

fn validate_gtin(gtin: String) -> Result<String, Error> {
    if gtin.len() != 14 || !gtin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::GtinFormat(gtin));
    }
    let bytes = gtin.as_bytes();
    let expected = gtin_check_digit(&bytes[..13]);
    let found = bytes[13] - b'0';
    if expected != found {
        return Err(Error::GtinCheckDigit { gtin, found, expected });
    }
    Ok(gtin)
}

fn parse_expiry(value: &str) -> Result<Date, Error> {
    let bad = || Error::ExpiryFormat(value.to_owned());
    if value.len() != 6 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let number = |range: std::ops::Range<usize>| value[range].parse::<u8>().map_err(|_| bad());
    // Cartridges expire within a few years of manufacture, so YY is read as 20YY.
    let year = 2000 + u16::from(number(0..2)?);
    let month = number(2..4)?;
    let day = number(4..6)?;
    if !(1..=12).contains(&month) {
        return Err(bad());
    }
    let last_day = days_in_month(year, month);
    // GS1: day 00 means the last day of the month.
    let day = if day == 0 { last_day } else { day };
    if day > last_day {
        return Err(bad());
    }
    Ok(Date { year, month, day })
}

fn validate_variable(ai: &'static str, value: String) -> Result<String, Error> {
    let printable = value.bytes().all(|b| b.is_ascii_graphic() && b != b'(' && b != b')');
    if value.is_empty() || value.len() > MAX_VARIABLE_LEN || !printable {
        return Err(Error::VariableField { ai, value });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HUMAN: &str = "(01)09506000134352(17)271231(10)LOT42(21)S0001";

    #[test]
    fn parses_human_readable() {
        let udi = Udi::parse(HUMAN).unwrap();
        assert_eq!(udi.gtin, "09506000134352");
        assert_eq!(udi.expiry, Date { year: 2027, month: 12, day: 31 });
        assert_eq!(udi.lot, "LOT42");
        assert_eq!(udi.serial, "S0001");
    }

    #[test]
    fn parses_raw_with_group_separator() {
        let raw = "010950600013435217271231\u{1d}10LOT42\u{1d}21S0001";
        // The GS after the fixed-length expiry is tolerated too.
        assert_eq!(Udi::parse(raw).unwrap(), Udi::parse(HUMAN).unwrap());
    }

    #[test]
    fn day_zero_means_end_of_month() {
        let udi = Udi::parse("(01)09506000134352(17)280200(10)L(21)S").unwrap();
        assert_eq!(udi.expiry, Date { year: 2028, month: 2, day: 29 });
    }

    #[test]
    fn rejects_bad_check_digit_and_missing_ais() {
        assert!(matches!(
            Udi::parse("(01)09506000134353(17)271231(10)L(21)S"),
            Err(Error::GtinCheckDigit { expected: 2, found: 3, .. })
        ));
        assert_eq!(Udi::parse("(01)09506000134352(17)271231(10)L"), Err(Error::MissingAi("21")));
        assert_eq!(Udi::parse("(01)09506000134352(17)271331(10)L(21)S"), Err(Error::ExpiryFormat("271331".into())));
        assert!(matches!(Udi::parse("(99)x"), Err(Error::UnsupportedAi(_))));
        assert_eq!(Udi::parse("  "), Err(Error::Empty));
    }

    #[test]
    fn epoch_days_match_known_dates() {
        assert_eq!(Date { year: 1970, month: 1, day: 1 }.days_since_epoch(), 0);
        assert_eq!(Date { year: 2000, month: 3, day: 1 }.days_since_epoch(), 11_017);
    }

    fn arb_udi() -> impl Strategy<Value = Udi> {
        ("[0-9]{13}", 0u16..100, 1u8..=12, 1u8..=28, "[A-Z0-9]{1,20}", "[A-Z0-9]{1,20}").prop_map(
            |(body, yy, month, day, lot, serial)| {
                let check = gtin_check_digit(body.as_bytes());
                Udi { gtin: format!("{body}{check}"), expiry: Date { year: 2000 + yy, month, day }, lot, serial }
            },
        )
    }

    proptest! {
        #[test]
        fn both_forms_round_trip(udi in arb_udi()) {
            prop_assert_eq!(Udi::parse(&udi.to_human_readable()).unwrap(), udi.clone());
            prop_assert_eq!(Udi::parse(&udi.to_raw()).unwrap(), udi);
        }

        #[test]
        fn any_other_check_digit_is_rejected(udi in arb_udi(), wrong in 0u8..10) {
            let right = udi.gtin.as_bytes()[13] - b'0';
            prop_assume!(wrong != right);
            let mut gtin = udi.gtin.clone();
            gtin.replace_range(13..14, &wrong.to_string());
            let text = Udi { gtin, ..udi }.to_human_readable();
            let is_check_digit_error = matches!(Udi::parse(&text), Err(Error::GtinCheckDigit { .. }));
            prop_assert!(is_check_digit_error);
        }
    }
}
