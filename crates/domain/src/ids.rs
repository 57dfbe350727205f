//! Typed identifiers, so a pen serial can never be passed where a clinic id is expected.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct InvalidId {
    pub kind: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// Longest identifier accepted from a device or a client; keeps tags and keys bounded.
pub const MAX_ID_LEN: usize = 64;

macro_rules! identifier {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// Accepts 1 to 64 characters of ASCII letters, digits, `-`, `_` and `.`: safe in
            /// MQTT topics, InfluxDB tags and log lines without escaping surprises.
            pub fn parse(value: &str) -> Result<Self, InvalidId> {
                let invalid = |reason| InvalidId { kind: $kind, value: value.chars().take(80).collect(), reason };
                if value.is_empty() {
                    return Err(invalid("empty"));
                }
                if value.len() > MAX_ID_LEN {
                    return Err(invalid("longer than 64 characters"));
                }
                if !value.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) {
                    return Err(invalid("only ASCII letters, digits, '-', '_' and '.' are allowed"));
                }
                Ok(Self(value.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidId;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }
    };
}

identifier!(
    /// A pen's serial number, as printed on the handpiece and used in its MQTT topics.
    PenSerial,
    "pen serial"
);
identifier!(
    /// A session id, unique per pen (the pen generates it).
    SessionId,
    "session id"
);
identifier!(
    /// A clinic's id, chosen by whoever registers it.
    ClinicId,
    "clinic id"
);
identifier!(
    /// A chain's id (the tenant that owns clinics).
    ChainId,
    "chain id"
);
identifier!(
    /// An operator's (practitioner's) id.
    OperatorId,
    "operator id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_serials() {
        assert_eq!(PenSerial::parse("PW-000123").unwrap().as_str(), "PW-000123");
    }

    #[test]
    fn rejects_topic_and_tag_breaking_characters() {
        for bad in ["", "a/b", "a b", "a,b", "a=b", "+", "#", "é"] {
            assert!(PenSerial::parse(bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(PenSerial::parse(&"x".repeat(65)).is_err());
    }
}
