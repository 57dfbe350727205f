//! `--inject reuse=0.05,no-disinfect=0.05`: per-session probabilities of breaking a rule.

use std::str::FromStr;

#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Injection {
    /// Probability that a session uses a cartridge another session already used.
    pub(crate) reuse: f64,
    /// Probability that a pen skips disinfection before a session (not before its first).
    pub(crate) no_disinfect: f64,
}

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
                "reuse" => injection.reuse = probability,
                "no-disinfect" => injection.no_disinfect = probability,
                other => return Err(format!("unknown injection {other:?}; known: reuse, no-disinfect")),
            }
        }
        Ok(injection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_form() {
        let injection: Injection = "reuse=0.05, no-disinfect=0.1".parse().unwrap();
        assert_eq!(injection, Injection { reuse: 0.05, no_disinfect: 0.1 });
        assert_eq!("".parse::<Injection>().unwrap(), Injection::default());
        assert!("reuse=2".parse::<Injection>().is_err());
        assert!("expired=0.1".parse::<Injection>().is_err());
        assert!("reuse".parse::<Injection>().is_err());
    }
}
