//! Which pens are registered and where they are, held in memory: ingest needs it for every
//! message (to quarantine unknown pens and to tag points), so it must not cost a query.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use penwarden_domain::{ChainId, ClinicId, PenSerial};

/// Where a pen is. Both ids are `None` for a pen registered but not yet assigned to a clinic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PenPlacement {
    pub clinic: Option<ClinicId>,
    pub chain: Option<ChainId>,
    pub model: String,
}

#[derive(Debug, Clone, Default)]
pub struct PenDirectory {
    pens: Arc<RwLock<HashMap<PenSerial, Arc<PenPlacement>>>>,
    /// The store's directory version the map was last read at (`Store::refresh_directory`).
    version: Arc<AtomicI64>,
}

impl PenDirectory {
    pub fn get(&self, pen: &PenSerial) -> Option<Arc<PenPlacement>> {
        self.read().get(pen).cloned()
    }

    pub(crate) fn insert(&self, pen: PenSerial, placement: PenPlacement) {
        self.pens.write().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(pen, Arc::new(placement));
    }

    pub(crate) fn replace_all(&self, pens: HashMap<PenSerial, Arc<PenPlacement>>, version: i64) {
        *self.pens.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = pens;
        self.version.store(version, Ordering::Release);
    }

    pub(crate) fn version(&self) -> i64 {
        self.version.load(Ordering::Acquire)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<PenSerial, Arc<PenPlacement>>> {
        // A panic elsewhere while holding the lock leaves the map consistent (single inserts).
        self.pens.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}
