//! GS1 UDI element strings as printed on cartridge boxes and stored on their chips.
//!
//! Two forms are accepted: bracketed (human-readable),
//! `(01)09506000134352(17)271231(10)LOT42(21)S0001`, where a `(` inside data is written `\(`,
//! and raw, where AIs follow each other and a variable-length field ends at a GS (0x1D) byte
//! or at the end of the string. Every AI of the GS1 syntax dictionary that a medical device's
//! UDI may carry is understood and validated by its GS1 format (see [`AI_DICTIONARY`]);
//! a cartridge's UDI must carry 01 (GTIN-14, check digit verified), 17 (expiry), 10 (lot) and
//! 21 (serial). Every element is kept as read, in order: the manufacturer signs exactly that
//! ([`Udi::signed_form`]), day 00 and all.

use std::fmt;

/// The ASCII group separator that ends a variable-length field in the raw form.
pub const GROUP_SEPARATOR: char = '\u{1d}';

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("UDI is empty")]
    Empty,
    #[error("UDI has leading or trailing whitespace")]
    Whitespace,
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
    #[error("({ai}) must be a date YYMMDD, got {value:?}")]
    DateFormat { ai: &'static str, value: String },
    #[error("({ai}) must be a date and time YYMMDDhhmm, got {value:?}")]
    DateTimeFormat { ai: &'static str, value: String },
    #[error("({ai}) must be 1 to {max} characters of GS1 character set 82, got {value:?}")]
    VariableField { ai: &'static str, max: usize, value: String },
    #[error("({ai}) must be 1 to {max} digits, got {value:?}")]
    NumericField { ai: &'static str, max: usize, value: String },
    #[error("unbalanced parentheses in bracketed UDI")]
    Parentheses,
}

/// The GS1 format of an AI's data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// N14 with a mod-10 check digit.
    Gtin,
    /// N6, YYMMDD; day 00 allowed (the month's last day).
    DateDay00,
    /// N10, YYMMDDhhmm.
    DateTime,
    /// X..n: GS1 character set 82.
    Cset82(usize),
    /// N..n.
    Numeric(usize),
}

impl Format {
    /// The data length when it is fixed (raw form: the data ends there, no GS needed).
    fn fixed_len(self) -> Option<usize> {
        match self {
            Format::Gtin => Some(14),
            Format::DateDay00 => Some(6),
            Format::DateTime => Some(10),
            Format::Cset82(_) | Format::Numeric(_) => None,
        }
    }
}

/// The AIs of the GS1 syntax dictionary a medical device's UDI may carry (GS1 General
/// Specifications; GS1 UDI guidance), with their formats.
pub const AI_DICTIONARY: [(&str, Format); 12] = [
    ("01", Format::Gtin),         // GTIN
    ("10", Format::Cset82(20)),   // batch or lot
    ("11", Format::DateDay00),    // production date
    ("17", Format::DateDay00),    // expiration date
    ("21", Format::Cset82(20)),   // serial number
    ("30", Format::Numeric(8)),   // variable count
    ("240", Format::Cset82(30)),  // additional product identification
    ("241", Format::Cset82(30)),  // customer part number
    ("243", Format::Cset82(20)),  // packaging component number
    ("250", Format::Cset82(30)),  // secondary serial number
    ("7003", Format::DateTime),   // expiration date and time
    ("8012", Format::Cset82(20)), // software version
];

fn lookup(ai: &str) -> Option<(&'static str, Format)> {
    AI_DICTIONARY.iter().find(|(known, _)| *known == ai).copied()
}

/// GS1 character set 82 (General Specifications, figure 7.11-1): the characters an X-format AI
/// may carry.
pub fn is_cset82(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            '!' | '"'
                | '%'
                | '&'
                | '\''
                | '('
                | ')'
                | '*'
                | '+'
                | ','
                | '-'
                | '.'
                | '/'
                | ':'
                | ';'
                | '<'
                | '='
                | '>'
                | '?'
                | '_'
        )
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

    /// The UTC date of a Unix time in milliseconds (Howard Hinnant's civil_from_days).
    pub fn from_unix_ms(unix_ms: i64) -> Date {
        let z = unix_ms.div_euclid(86_400_000) + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)).clamp(0, i64::from(u16::MAX)) as u16;
        Date { year, month, day }
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

/// A GS1 date as printed, YYMMDD, with day 00 meaning the month's last day. The century is not
/// printed: [`YyMmDd::date`] sets it by GS1's window around a reference year.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct YyMmDd {
    pub yy: u8,
    pub month: u8,
    pub day: u8,
}

impl YyMmDd {
    /// The calendar date, with the century set as GS1 General Specifications section 7.12
    /// sets it relative to `reference_year` (the year the date is read in): a two-digit year
    /// 51 or more years ahead is in the previous century, 50 or more years behind in the next.
    /// Day 00 is the month's last day.
    pub fn date(self, reference_year: u16) -> Date {
        let century = reference_year / 100 * 100;
        let difference = i32::from(self.yy) - i32::from(reference_year % 100);
        let year = match difference {
            51.. => century.saturating_sub(100),
            ..=-50 => century + 100,
            _ => century,
        } + u16::from(self.yy);
        let last_day = days_in_month(year, self.month);
        // A 29 February that the resolved century makes no leap year (2100) is its last day.
        let day = if self.day == 0 { last_day } else { self.day.min(last_day) };
        Date { year, month: self.month, day }
    }

    fn parse(ai: &'static str, value: &str) -> Result<YyMmDd, Error> {
        let bad = || Error::DateFormat { ai, value: shown(value) };
        if value.len() != 6 || !value.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        let number = |at: usize| (value.as_bytes()[at] - b'0') * 10 + (value.as_bytes()[at + 1] - b'0');
        let (yy, month, day) = (number(0), number(2), number(4));
        if !(1..=12).contains(&month) {
            return Err(bad());
        }
        // Without the century, 29 February is valid in any year divisible by four (00 too: it
        // is 2000 in this century's window).
        let last_day = if month == 2 && yy % 4 == 0 { 29 } else { days_in_month(2001, month) };
        if day > last_day {
            return Err(bad());
        }
        Ok(YyMmDd { yy, month, day })
    }
}

impl fmt::Display for YyMmDd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}{:02}{:02}", self.yy, self.month, self.day)
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
    pub expiry: YyMmDd,
    pub lot: String,
    pub serial: String,
    /// Every element string as read, in order, with its data unescaped.
    pub elements: Vec<(&'static str, String)>,
}

impl Udi {
    /// A cartridge UDI of the four AIs a cartridge must carry, in the usual order.
    pub fn new(gtin: String, expiry: Date, lot: String, serial: String) -> Udi {
        let expiry = YyMmDd { yy: (expiry.year % 100) as u8, month: expiry.month, day: expiry.day };
        let elements =
            vec![("01", gtin.clone()), ("17", expiry.to_string()), ("10", lot.clone()), ("21", serial.clone())];
        Udi { gtin, expiry, lot, serial, elements }
    }

    pub fn key(&self) -> CartridgeKey {
        CartridgeKey { gtin: self.gtin.clone(), serial: self.serial.clone() }
    }

    /// The expiry date, its century set relative to `reference_year` (the year of use).
    pub fn expiry_date(&self, reference_year: u16) -> Date {
        self.expiry.date(reference_year)
    }

    /// Parses either form; see the module docs.
    pub fn parse(text: &str) -> Result<Self, Error> {
        if text.is_empty() {
            return Err(Error::Empty);
        }
        if text.trim() != text {
            return Err(Error::Whitespace);
        }
        let elements = if text.starts_with('(') { split_bracketed(text)? } else { split_raw(text)? };
        let mut seen: Vec<&'static str> = Vec::with_capacity(elements.len());
        let (mut gtin, mut expiry, mut lot, mut serial) = (None, None, None, None);
        for (ai, value) in &elements {
            if seen.contains(ai) {
                return Err(Error::DuplicateAi(ai));
            }
            seen.push(ai);
            let (_, format) = lookup(ai).ok_or_else(|| Error::UnsupportedAi(ai.to_string()))?;
            validate(ai, format, value)?;
            match *ai {
                "01" => gtin = Some(value.clone()),
                "17" => expiry = Some(YyMmDd::parse(ai, value)?),
                "10" => lot = Some(value.clone()),
                "21" => serial = Some(value.clone()),
                _ => {}
            }
        }
        Ok(Udi {
            gtin: gtin.ok_or(Error::MissingAi("01"))?,
            expiry: expiry.ok_or(Error::MissingAi("17"))?,
            lot: lot.ok_or(Error::MissingAi("10"))?,
            serial: serial.ok_or(Error::MissingAi("21"))?,
            elements,
        })
    }

    /// The bracketed form of the elements as read, in their order, a `(` in data written `\(`:
    /// what the manufacturer signs, and the canonical form whichever form was read.
    pub fn signed_form(&self) -> String {
        let mut text = String::new();
        for (ai, value) in &self.elements {
            text.push('(');
            text.push_str(ai);
            text.push(')');
            for c in value.chars() {
                if c == '(' {
                    text.push('\\');
                }
                text.push(c);
            }
        }
        text
    }

    /// The bracketed (human-readable) form: [`Udi::signed_form`].
    pub fn to_human_readable(&self) -> String {
        self.signed_form()
    }

    /// The raw form: a GS after every element whose length is not fixed, except the last.
    pub fn to_raw(&self) -> String {
        let mut text = String::new();
        for (index, (ai, value)) in self.elements.iter().enumerate() {
            text.push_str(ai);
            text.push_str(value);
            let fixed = lookup(ai).and_then(|(_, format)| format.fixed_len()).is_some();
            if !fixed && index + 1 < self.elements.len() {
                text.push(GROUP_SEPARATOR);
            }
        }
        text
    }
}

/// A value for an error message: short, whatever was read.
fn shown(value: &str) -> String {
    value.chars().take(40).collect()
}

fn validate(ai: &'static str, format: Format, value: &str) -> Result<(), Error> {
    match format {
        Format::Gtin => validate_gtin(value),
        Format::DateDay00 => YyMmDd::parse(ai, value).map(|_| ()),
        Format::DateTime => {
            let bad = || Error::DateTimeFormat { ai, value: shown(value) };
            if value.len() != 10 || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let date = YyMmDd::parse(ai, &value[..6]).map_err(|_| bad())?;
            let (hour, minute) = (&value[6..8], &value[8..10]);
            let valid_time = hour < "24" && minute < "60";
            if date.day == 0 || !valid_time {
                return Err(bad());
            }
            Ok(())
        }
        Format::Cset82(max) => {
            let length = value.chars().count();
            if length == 0 || length > max || !value.chars().all(is_cset82) {
                return Err(Error::VariableField { ai, max, value: shown(value) });
            }
            Ok(())
        }
        Format::Numeric(max) => {
            if value.is_empty() || value.len() > max || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::NumericField { ai, max, value: shown(value) });
            }
            Ok(())
        }
    }
}

/// `(AI)data(AI)data…`; a `(` inside data is escaped as `\(`.
fn split_bracketed(text: &str) -> Result<Vec<(&'static str, String)>, Error> {
    let mut elements = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let after_open = rest.strip_prefix('(').ok_or(Error::Parentheses)?;
        let close = after_open.find(')').ok_or(Error::Parentheses)?;
        let ai = &after_open[..close];
        let (ai, _) = lookup(ai).ok_or_else(|| Error::UnsupportedAi(shown(ai)))?;
        let mut data = String::new();
        let mut chars = after_open[close + 1..].char_indices().peekable();
        let mut end = after_open.len() - close - 1;
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' if matches!(chars.peek(), Some((_, '('))) => {
                    data.push('(');
                    chars.next();
                }
                '(' => {
                    end = at;
                    break;
                }
                other => data.push(other),
            }
        }
        elements.push((ai, data));
        rest = &after_open[close + 1 + end..];
    }
    Ok(elements)
}

fn split_raw(text: &str) -> Result<Vec<(&'static str, String)>, Error> {
    let mut elements = Vec::new();
    let mut rest = text.trim_start_matches(GROUP_SEPARATOR);
    while !rest.is_empty() {
        // GS1 AIs are prefix-free: at most one of the 2-, 3- and 4-digit prefixes is an AI.
        let (ai, format) = (2..=4)
            .filter_map(|len| rest.get(..len).and_then(lookup))
            .next()
            .ok_or_else(|| Error::UnsupportedAi(shown(rest)))?;
        let body = &rest[ai.len()..];
        let (value, next) = match format.fixed_len() {
            Some(len) => {
                let value = body.get(..len).unwrap_or(body);
                (value, &body[value.len()..])
            }
            None => {
                let end = body.find(GROUP_SEPARATOR).unwrap_or(body.len());
                (&body[..end], &body[end..])
            }
        };
        elements.push((ai, value.to_owned()));
        rest = next.trim_start_matches(GROUP_SEPARATOR);
    }
    Ok(elements)
}

/// The GS1 mod-10 check digit over the first 13 digits of a GTIN-14.
pub fn gtin_check_digit(first_13: &[u8]) -> u8 {
    let sum: u32 =
        first_13.iter().rev().enumerate().map(|(i, d)| u32::from(d - b'0') * if i % 2 == 0 { 3 } else { 1 }).sum();
    ((10 - sum % 10) % 10) as u8
}

/// A GTIN-14: 14 digits with a valid check digit.
pub fn validate_gtin(gtin: &str) -> Result<(), Error> {
    if gtin.len() != 14 || !gtin.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::GtinFormat(shown(gtin)));
    }
    let bytes = gtin.as_bytes();
    let expected = gtin_check_digit(&bytes[..13]);
    let found = bytes[13] - b'0';
    if expected != found {
        return Err(Error::GtinCheckDigit { gtin: gtin.to_owned(), found, expected });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const HUMAN: &str = "(01)09506000134352(17)271231(10)LOT42(21)S0001";

    fn with(ai: &str, value: &str) -> String {
        let mut udi = String::from("(01)09506000134352");
        for (key, default) in [("17", "271231"), ("10", "L"), ("21", "S")] {
            udi.push_str(&format!("({key}){}", if key == ai { value } else { default }));
        }
        udi
    }

    #[test]
    fn parses_human_readable() {
        let udi = Udi::parse(HUMAN).unwrap();
        assert_eq!(udi.gtin, "09506000134352");
        assert_eq!(udi.expiry, YyMmDd { yy: 27, month: 12, day: 31 });
        assert_eq!(udi.expiry_date(2026), Date { year: 2027, month: 12, day: 31 });
        assert_eq!(udi.lot, "LOT42");
        assert_eq!(udi.serial, "S0001");
        assert_eq!(udi.signed_form(), HUMAN);
    }

    #[test]
    fn parses_raw_with_group_separator() {
        let raw = "010950600013435217271231\u{1d}10LOT42\u{1d}21S0001";
        // The GS after the fixed-length expiry is tolerated too.
        assert_eq!(Udi::parse(raw).unwrap(), Udi::parse(HUMAN).unwrap());
    }

    #[test]
    fn day_zero_means_end_of_month_and_is_signed_as_read() {
        let udi = Udi::parse("(01)09506000134352(17)240200(10)L(21)S").unwrap();
        assert_eq!(udi.expiry_date(2026), Date { year: 2024, month: 2, day: 29 });
        assert_eq!(udi.signed_form(), "(01)09506000134352(17)240200(10)L(21)S", "not re-printed as 240229");
        let raw = Udi::parse("01095060001343521724020010L\u{1d}21S").unwrap();
        assert_eq!(raw.signed_form(), udi.signed_form());
    }

    #[test]
    fn other_udi_ais_are_kept_in_order_and_validated() {
        let text = "(01)09506000134352(11)230115(17)280200(10)L(21)S(240)ALT-1(7003)2802281530";
        let udi = Udi::parse(text).unwrap();
        assert_eq!(udi.signed_form(), text);
        let raw = "01095060001343521123011517280200".to_owned() + "10L\u{1d}21S\u{1d}240ALT-1\u{1d}70032802281530";
        assert_eq!(Udi::parse(&raw).unwrap().signed_form(), text);
        assert_eq!(Udi::parse(&udi.to_raw()).unwrap(), udi);
        assert!(matches!(
            Udi::parse(&text.replace("(11)230115", "(11)231315")),
            Err(Error::DateFormat { ai: "11", .. })
        ));
        assert!(matches!(
            Udi::parse(&text.replace("2802281530", "2802282430")),
            Err(Error::DateTimeFormat { ai: "7003", .. })
        ));
        assert!(matches!(Udi::parse(&format!("{HUMAN}(99)x")), Err(Error::UnsupportedAi(_))));
        assert_eq!(Udi::parse(&format!("{HUMAN}(11)230115(11)230116")), Err(Error::DuplicateAi("11")));
    }

    #[test]
    fn parentheses_in_data_are_escaped_in_the_bracketed_form() {
        let udi = Udi::parse(r"(01)09506000134352(17)271231(10)A\(1)(21)S").unwrap();
        assert_eq!(udi.lot, "A(1)");
        assert_eq!(udi.signed_form(), r"(01)09506000134352(17)271231(10)A\(1)(21)S");
        assert_eq!(Udi::parse(&udi.to_raw()).unwrap(), udi);
    }

    /// The worked examples of docs/protocol.md, "Cartridge UDI and signature".
    #[test]
    fn the_documented_signed_forms() {
        let examples = [
            (
                "(01)09506000134352(17)300200(10)LOT2(21)PW-000001-1",
                "(01)09506000134352(17)300200(10)LOT2(21)PW-000001-1",
            ),
            (
                "01095060001343521730020010LOT2\u{1d}21PW-000001-1",
                "(01)09506000134352(17)300200(10)LOT2(21)PW-000001-1",
            ),
            (
                r"(01)09506000134352(11)290115(17)301231(10)L\(1)(21)S",
                r"(01)09506000134352(11)290115(17)301231(10)L\(1)(21)S",
            ),
            (
                "0109506000134352112901151730123110L(1)\u{1d}21S",
                r"(01)09506000134352(11)290115(17)301231(10)L\(1)(21)S",
            ),
        ];
        for (chip, signed) in examples {
            assert_eq!(Udi::parse(chip).unwrap().signed_form(), signed, "{chip}");
        }
    }

    #[test]
    fn two_digit_years_follow_the_gs1_century_window() {
        let expiry = |yy| YyMmDd { yy, month: 6, day: 1 };
        assert_eq!(expiry(76).date(2026).year, 2076, "50 years ahead: this century");
        assert_eq!(expiry(77).date(2026).year, 1977, "51 years ahead: the previous century");
        assert_eq!(expiry(99).date(2026).year, 1999);
        assert_eq!(expiry(1).date(2099).year, 2101, "98 years behind: the next century");
        assert_eq!(expiry(50).date(2099).year, 2050, "49 years behind: this century");
        assert_eq!(expiry(49).date(2099).year, 2149, "50 years behind: the next century");
        assert_eq!(YyMmDd { yy: 0, month: 2, day: 29 }.date(2080).day, 28, "2100 is no leap year");
    }

    #[test]
    fn surrounding_whitespace_is_refused_not_trimmed() {
        assert_eq!(Udi::parse(&format!(" {HUMAN}")), Err(Error::Whitespace));
        assert_eq!(Udi::parse(&format!("{HUMAN}\n")), Err(Error::Whitespace));
        assert_eq!(Udi::parse("  "), Err(Error::Whitespace));
        assert_eq!(Udi::parse(""), Err(Error::Empty));
    }

    #[test]
    fn rejects_bad_check_digit_and_missing_ais() {
        assert!(matches!(
            Udi::parse("(01)09506000134353(17)271231(10)L(21)S"),
            Err(Error::GtinCheckDigit { expected: 2, found: 3, .. })
        ));
        assert_eq!(Udi::parse("(01)09506000134352(17)271231(10)L"), Err(Error::MissingAi("21")));
        assert!(matches!(Udi::parse(&with("17", "271331")), Err(Error::DateFormat { ai: "17", .. })));
        assert!(matches!(Udi::parse("(99)x"), Err(Error::UnsupportedAi(_))));
    }

    /// gs1/gs1-syntax-engine, src/c-lib/syntax/lint_yymmd0.c (AI 17's linter), run with its
    /// CURRENT_YEAR of 21: every date it passes parses, every one it fails is refused.
    #[test]
    fn gs1_syntax_engine_yymmd0_vectors() {
        let pass = [
            "000606", "250606", "500606", "750606", "990606", "200131", "200229", "200331", "200430", "200531",
            "200630", "200731", "200831", "200930", "201031", "201130", "201231", "210228", "220228", "230228",
            "240229", "000229", "040229", "960229", "200600",
        ];
        let fail = [
            "x00131", "2x0131", "20x131", "200x31", "2001x1", "20013x", "1", "11", "111", "1111", "11111", "1111111",
            "200010", "201310", "209910", "200132", "200230", "200332", "200431", "200532", "200631", "200732",
            "200832", "200931", "201032", "201131", "201232", "210229", "220229", "230229", "240230", "000230",
            "040230", "960230",
        ];
        for date in pass {
            let udi = Udi::parse(&with("17", date)).unwrap_or_else(|e| panic!("{date}: {e}"));
            let resolved = udi.expiry_date(2021);
            assert!(resolved.day >= 1 && resolved.day <= days_in_month(resolved.year, resolved.month), "{date}");
        }
        for date in fail {
            assert!(Udi::parse(&with("17", date)).is_err(), "{date} must be refused");
        }
        assert_eq!(Udi::parse(&with("17", "")), Err(Error::DateFormat { ai: "17", value: String::new() }));
    }

    /// jodal/biip's tests (tests/test_checksums.py, test_gs1_element_strings.py,
    /// test_gs1_messages.py), on the AIs a cartridge UDI carries. biip's element strings stand
    /// alone; here each sits in a UDI with the AIs a cartridge needs, and its best-before (15)
    /// vectors are read as expiry (17), which has the same format.
    #[test]
    fn biip_vectors() {
        // Check digits of GTIN-13 payloads (a GTIN-14 with indicator 0 has the same digit).
        for (payload, digit) in
            [("629104150021", 3), ("703801005447", 1), ("950110153100", 0), ("978820551237", 5), ("708000382434", 9)]
        {
            assert_eq!(gtin_check_digit(format!("0{payload}").as_bytes()), digit, "{payload}");
        }
        // A message: fixed-length fields need no separator, a variable one last needs none.
        let udi = Udi::parse("010703206980498817210526100329");
        assert_eq!(udi, Err(Error::MissingAi("21")), "a cartridge needs a serial");
        let udi = Udi::parse("010703206980498817210526100329\u{1d}21S").unwrap();
        assert_eq!((udi.gtin.as_str(), udi.lot.as_str()), ("07032069804988", "0329"));
        assert_eq!(udi.expiry_date(2026), Date { year: 2021, month: 5, day: 26 });
        assert_eq!(udi.signed_form(), "(01)07032069804988(17)210526(10)0329(21)S");
        // A variable-length lot in the middle without a separator takes everything after it.
        assert_eq!(Udi::parse("010703206980498810032917210526"), Err(Error::MissingAi("17")));
        // Ended by a separator, the fields after it are read.
        let udi = Udi::parse("0107032069804988100329\u{1d}1721052621S").unwrap();
        assert_eq!(udi.signed_form(), "(01)07032069804988(10)0329(17)210526(21)S");
        // Dates: 030201 is 2003-02-01; day 00 is the month's last day; Feb 30 does not exist.
        assert_eq!(Udi::parse(&with("17", "030201")).unwrap().expiry_date(2026), Date { year: 2003, month: 2, day: 1 });
        for (date, year, month, day) in [("200200", 2020, 2, 29), ("210200", 2021, 2, 28), ("211200", 2021, 12, 31)] {
            assert_eq!(Udi::parse(&with("17", date)).unwrap().expiry_date(2026), Date { year, month, day }, "{date}");
        }
        assert!(Udi::parse(&format!("{HUMAN}(11)030201")).is_ok());
        assert!(matches!(Udi::parse(&format!("{HUMAN}(11)120230")), Err(Error::DateFormat { ai: "11", .. })));
        assert!(matches!(Udi::parse(&with("17", "990229")), Err(Error::DateFormat { ai: "17", .. })));
        assert!(Udi::parse(&format!("{HUMAN}(7003)0701021415")).is_ok());
        // The century window: 49 years back and 50 ahead of the year of use.
        let (back, ahead) = (Udi::parse(&with("17", "770526")).unwrap(), Udi::parse(&with("17", "760526")).unwrap());
        assert_eq!(back.expiry_date(2026).year, 1977);
        assert_eq!(ahead.expiry_date(2026).year, 2076);
        // Too short a GTIN.
        assert!(matches!(Udi::parse("(01)01123(17)271231(10)L(21)S"), Err(Error::GtinFormat(_))));
    }

    /// gs1/gs1-syntax-engine, src/c-lib/syntax/lint_cset82.c (the linter of AIs 10 and 21).
    #[test]
    fn gs1_syntax_engine_cset82_vectors() {
        for value in
            ["!\"%&'()*+,-/012345", "6789:;<=>?ABCDEFGHIJ", "KLMNOPQRSTUVWXYZ_abc", "defghijklmnopqrstuvw", "xyz"]
        {
            for ai in ["10", "21"] {
                let udi = Udi::parse(&with(ai, &value.replace('(', r"\("))).unwrap_or_else(|e| panic!("{value}: {e}"));
                let field = if ai == "10" { &udi.lot } else { &udi.serial };
                assert_eq!(field, value);
                assert_eq!(Udi::parse(&udi.to_raw()).unwrap(), udi, "raw form of {value}");
            }
        }
        let refused = (0x01u8..=0x20)
            .map(char::from)
            .chain("#$@[\\]^`{|}~\u{7f}".chars())
            .chain((0x80u32..=0xff).filter_map(char::from_u32));
        for c in refused {
            for value in [format!("{c}"), format!("AB{c}C"), format!("ABC{c}")] {
                let text = with("10", &value);
                // A leading or trailing control character is whitespace to the whole UDI; inside
                // the lot it is a character outside set 82. Refused either way.
                assert!(Udi::parse(&text).is_err(), "{value:?} must be refused");
            }
        }
    }

    #[test]
    fn epoch_days_match_known_dates() {
        assert_eq!(Date { year: 1970, month: 1, day: 1 }.days_since_epoch(), 0);
        assert_eq!(Date { year: 2000, month: 3, day: 1 }.days_since_epoch(), 11_017);
        assert_eq!(Date::from_unix_ms(0), Date { year: 1970, month: 1, day: 1 });
        assert_eq!(Date::from_unix_ms(951_868_800_000), Date { year: 2000, month: 3, day: 1 });
        assert_eq!(Date::from_unix_ms(951_868_799_999), Date { year: 2000, month: 2, day: 29 });
    }

    fn arb_udi() -> impl Strategy<Value = Udi> {
        let cset82 = "[!\"%&'()*+,\\-./0-9:;<=>?A-Z_a-z]{1,20}";
        ("[0-9]{13}", 0u16..100, 1u8..=12, 1u8..=28, cset82, cset82).prop_map(|(body, yy, month, day, lot, serial)| {
            let check = gtin_check_digit(body.as_bytes());
            Udi::new(format!("{body}{check}"), Date { year: 2000 + yy, month, day }, lot, serial)
        })
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
            let text = Udi::new(gtin, udi.expiry.date(2026), udi.lot, udi.serial).to_human_readable();
            let is_check_digit_error = matches!(Udi::parse(&text), Err(Error::GtinCheckDigit { .. }));
            prop_assert!(is_check_digit_error);
        }
    }
}
