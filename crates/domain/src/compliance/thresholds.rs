//! Thresholds of the session rules, with the defaults and the reasoning behind them
//! (docs/compliance-rules.md repeats them for operators).

use serde::{Deserialize, Serialize};

use crate::event::TreatmentArea;

/// Maximum needle depth per treatment area, in mm. Defaults follow common clinical practice
/// for collagen induction: thin skin near the eyes and mouth tolerates far less than the body.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AreaDepthLimits {
    pub forehead: f64,
    pub periorbital: f64,
    pub cheek: f64,
    pub perioral: f64,
    pub neck: f64,
    pub scalp: f64,
    pub body: f64,
    /// When the pen does not say where it treats, the strictest sensible limit is unknowable;
    /// the face's general limit applies.
    pub unspecified: f64,
}

impl Default for AreaDepthLimits {
    fn default() -> Self {
        AreaDepthLimits {
            forehead: 1.0,
            periorbital: 0.5,
            cheek: 1.5,
            perioral: 1.0,
            neck: 1.0,
            scalp: 1.5,
            body: 2.5,
            unspecified: 1.5,
        }
    }
}

impl AreaDepthLimits {
    pub fn for_area(&self, area: TreatmentArea) -> f64 {
        match area {
            TreatmentArea::Forehead => self.forehead,
            TreatmentArea::Periorbital => self.periorbital,
            TreatmentArea::Cheek => self.cheek,
            TreatmentArea::Perioral => self.perioral,
            TreatmentArea::Neck => self.neck,
            TreatmentArea::Scalp => self.scalp,
            TreatmentArea::Body => self.body,
            TreatmentArea::Unspecified => self.unspecified,
        }
    }
}

/// Maximum depth an operator may use by licence level, in mm. Level 1 (aesthetician, cosmetic
/// depths only), level 2 (licensed nurse or therapist), level 3 (physician: the full range).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LicenceDepthLimits {
    pub level_1: f64,
    pub level_2: f64,
    pub level_3: f64,
}

impl Default for LicenceDepthLimits {
    fn default() -> Self {
        LicenceDepthLimits { level_1: 0.5, level_2: 1.5, level_3: 2.5 }
    }
}

impl LicenceDepthLimits {
    /// `None` for an unknown level: no licence limit can be applied.
    pub fn for_level(&self, level: u8) -> Option<f64> {
        match level {
            1 => Some(self.level_1),
            2 => Some(self.level_2),
            3 => Some(self.level_3),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Thresholds {
    /// Motor run time one cartridge may see, in seconds. Needle tips dull with strokes; a full-
    /// face treatment runs the motor 10 to 20 minutes, so 30 minutes leaves margin while
    /// catching a cartridge carried across clients.
    pub cartridge_max_motor_seconds: f64,
    /// Strokes one cartridge may make: 30 minutes at about 120 strokes/s.
    pub cartridge_max_strokes: u64,
    pub area_depth_limits_mm: AreaDepthLimits,
    pub licence_depth_limits_mm: LicenceDepthLimits,
    /// Motor hours between factory services (bearing and drive wear).
    pub service_interval_motor_hours: f64,
    /// Oldest firmware still supported (earlier versions lack the cartridge lock-out).
    pub min_firmware: String,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            cartridge_max_motor_seconds: 1800.0,
            cartridge_max_strokes: 216_000,
            area_depth_limits_mm: AreaDepthLimits::default(),
            licence_depth_limits_mm: LicenceDepthLimits::default(),
            service_interval_motor_hours: 500.0,
            min_firmware: "2.0.0".into(),
        }
    }
}

/// Compares dotted numeric versions ("2.10.1" > "2.9"); non-numeric parts compare as 0.
pub fn firmware_at_least(version: &str, minimum: &str) -> bool {
    let parse =
        |v: &str| -> Vec<u64> { v.trim_start_matches('v').split('.').map(|p| p.parse().unwrap_or(0)).collect() };
    let (mut version, mut minimum) = (parse(version), parse(minimum));
    let len = version.len().max(minimum.len());
    version.resize(len, 0);
    minimum.resize(len, 0);
    version >= minimum
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn firmware_versions_compare_numerically() {
        assert!(firmware_at_least("2.10.1", "2.9"));
        assert!(firmware_at_least("2.0", "2.0.0"));
        assert!(!firmware_at_least("1.9.9", "2.0.0"));
        assert!(firmware_at_least("v3", "2.0.0"));
    }
}
