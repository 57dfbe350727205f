//! Registration of chains, clinics and pens.

use std::collections::HashMap;
use std::sync::Arc;

use penwarden_domain::access::Scope;
use penwarden_domain::ids::OperatorId;
use penwarden_domain::ownership::GtinAssignment;
use penwarden_domain::{ChainId, ClinicId, PenSerial};
use sqlx::QueryBuilder;

use crate::backend::{in_record_transaction, reading, writing, Column, StoreRow};
use crate::scope::push_pen_scope;

use crate::directory::PenPlacement;
use crate::{Effects, Error, Result, Store};

#[derive(Debug, Clone, PartialEq)]
pub struct ChainRow {
    pub chain_id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ClinicRow {
    pub clinic_id: String,
    pub chain_id: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct PenRow {
    pub pen_serial: String,
    pub clinic_id: Option<String>,
    pub chain_id: Option<String>,
    pub model: String,
    pub firmware: String,
    pub online: bool,
    pub last_seen_ms: Option<i64>,
    pub battery_pct: Option<f64>,
    pub motor_hours: Option<f64>,
    pub manufacturer_id: Option<String>,
    /// The highest seq received from the pen (events, telemetry and state messages).
    pub last_seq: u64,
}

const PEN_COLUMNS: &str = "p.pen_serial, p.clinic_id, c.chain_id, p.model, p.firmware, p.online, p.last_seen_ms, p.battery_pct, p.motor_hours, p.manufacturer_id,
    (SELECT MAX(seq) FROM (
        SELECT COALESCE((SELECT MAX(r.last_seq) FROM received_seq_runs r WHERE r.pen_serial = p.pen_serial), 0) AS seq
        UNION ALL
        SELECT COALESCE((SELECT MAX(t.seq) FROM pen_states t WHERE t.pen_serial = p.pen_serial), 0)) AS highest)";

fn pen_row(row: &impl StoreRow) -> PenRow {
    PenRow {
        pen_serial: row.column(0),
        clinic_id: row.column(1),
        chain_id: row.column(2),
        model: row.column(3),
        firmware: row.column(4),
        online: row.column(5),
        last_seen_ms: row.column(6),
        battery_pct: row.column(7),
        motor_hours: row.column(8),
        manufacturer_id: row.column(9),
        last_seq: Column::<i64>::column(row, 10).max(0) as u64,
    }
}

impl Store {
    /// Creates a chain, or renames it if it exists (registration is idempotent).
    pub async fn register_chain(&self, chain: &ChainId, name: &str, now_ms: i64) -> Result<ChainRow> {
        writing!(self, pool => {
            sqlx::query(
                "INSERT INTO chains (chain_id, name, created_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (chain_id) DO UPDATE SET name = excluded.name",
            )
            .bind(chain.as_str())
            .bind(name)
            .bind(now_ms)
            .execute(pool)
            .await?;
            Ok(ChainRow { chain_id: chain.to_string(), name: name.to_owned() })
        })
    }

    /// Creates a clinic in an existing chain, or updates it.
    pub async fn register_clinic(
        &self,
        clinic: &ClinicId,
        chain: &ChainId,
        name: &str,
        now_ms: i64,
    ) -> Result<ClinicRow> {
        writing!(self, pool => {
            let chain_exists = sqlx::query("SELECT 1 FROM chains WHERE chain_id = $1")
                .bind(chain.as_str())
                .fetch_optional(pool)
                .await?
                .is_some();
            if !chain_exists {
                return Err(Error::NotFound(format!("chain {chain}")));
            }
            sqlx::query(
                "INSERT INTO clinics (clinic_id, chain_id, name, created_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (clinic_id) DO UPDATE SET chain_id = excluded.chain_id, name = excluded.name",
            )
            .bind(clinic.as_str())
            .bind(chain.as_str())
            .bind(name)
            .bind(now_ms)
            .execute(pool)
            .await?;
            self.reload_directory().await?;
            Ok(ClinicRow { clinic_id: clinic.to_string(), chain_id: chain.to_string(), name: name.to_owned() })
        })
    }

    /// Registers a pen (or re-assigns it) to a clinic; `clinic` may be `None` for stock pens.
    pub async fn register_pen(
        &self,
        pen: &PenSerial,
        clinic: Option<&ClinicId>,
        model: &str,
        manufacturer_id: &str,
        now_ms: i64,
    ) -> Result<PenRow> {
        writing!(self, pool => {
            let chain: Option<String> = match clinic {
                Some(clinic) => Some(
                    sqlx::query_scalar("SELECT chain_id FROM clinics WHERE clinic_id = $1")
                        .bind(clinic.as_str())
                        .fetch_optional(pool)
                        .await?
                        .ok_or_else(|| Error::NotFound(format!("clinic {clinic}")))?,
                ),
                None => None,
            };
            sqlx::query(
                "INSERT INTO pens (pen_serial, clinic_id, model, manufacturer_id, registered_ms) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (pen_serial) DO UPDATE SET clinic_id = excluded.clinic_id,
                     model = CASE WHEN excluded.model = '' THEN pens.model ELSE excluded.model END,
                     manufacturer_id = COALESCE(excluded.manufacturer_id, pens.manufacturer_id),
                     auto_registered = FALSE",
            )
            .bind(pen.as_str())
            .bind(clinic.map(ClinicId::as_str))
            .bind(model)
            .bind((!manufacturer_id.is_empty()).then_some(manufacturer_id))
            .bind(now_ms)
            .execute(pool)
            .await?;
            let chain = chain.map(|c| ChainId::parse(&c)).transpose().map_err(|e| Error::Invalid(e.to_string()))?;
            let row = self.pen(pen).await?;
            self.directory.insert(pen.clone(), PenPlacement { clinic: clinic.cloned(), chain, model: row.model.clone() });
            Ok(row)
        })
    }

    pub async fn pen(&self, pen: &PenSerial) -> Result<PenRow> {
        reading!(self, pool => {
            let sql = format!(
                "SELECT {PEN_COLUMNS} FROM pens p LEFT JOIN clinics c ON c.clinic_id = p.clinic_id WHERE p.pen_serial = $1"
            );
            let row = sqlx::query(&sql)
                .bind(pen.as_str())
                .fetch_optional(pool)
                .await?
                .ok_or_else(|| Error::NotFound(format!("pen {pen}")))?;
            Ok(pen_row(&row))
        })
    }

    /// Pens `scope` may see, optionally only those of one clinic and/or chain, by serial.
    pub async fn list_pens(
        &self,
        clinic: Option<&ClinicId>,
        chain: Option<&ChainId>,
        scope: &Scope,
    ) -> Result<Vec<PenRow>> {
        reading!(self, pool => {
            let mut query = QueryBuilder::new(format!(
                "SELECT {PEN_COLUMNS} FROM pens p LEFT JOIN clinics c ON c.clinic_id = p.clinic_id WHERE 1 = 1"
            ));
            if let Some(clinic) = clinic {
                query.push(" AND p.clinic_id = ").push_bind(clinic.as_str());
            }
            if let Some(chain) = chain {
                query.push(" AND c.chain_id = ").push_bind(chain.as_str());
            }
            push_pen_scope(&mut query, scope);
            query.push(" ORDER BY p.pen_serial");
            let rows = query.build().fetch_all(pool).await?;
            Ok(rows.iter().map(pen_row).collect())
        })
    }

    /// The pen, if `scope` may see it; "not found" otherwise, as if it did not exist.
    pub async fn pen_in_scope(&self, pen: &PenSerial, scope: &Scope) -> Result<PenRow> {
        reading!(self, pool => {
            let mut query = QueryBuilder::new(format!(
                "SELECT {PEN_COLUMNS} FROM pens p LEFT JOIN clinics c ON c.clinic_id = p.clinic_id WHERE p.pen_serial = "
            ));
            query.push_bind(pen.as_str());
            push_pen_scope(&mut query, scope);
            let row = query.build().fetch_optional(pool).await?;
            row.as_ref().map(pen_row).ok_or_else(|| Error::NotFound(format!("pen {pen}")))
        })
    }

    /// The chain a clinic belongs to, if the clinic is registered.
    pub async fn clinic_chain(&self, clinic: &ClinicId) -> Result<Option<String>> {
        reading!(self, pool => {
            Ok(sqlx::query_scalar("SELECT chain_id FROM clinics WHERE clinic_id = $1")
                .bind(clinic.as_str())
                .fetch_optional(pool)
                .await?)
        })
    }

    /// Reads the pen directory again if the store's directory version moved since it was last
    /// read (another instance sharing the store registered or moved a pen). Returns whether it
    /// did. One single-row read when nothing changed: cheap enough to call every half second.
    pub async fn refresh_directory(&self) -> Result<bool> {
        let version = self.directory_version().await?;
        if version == self.directory.version() {
            return Ok(false);
        }
        self.reload_directory().await?;
        Ok(true)
    }

    async fn directory_version(&self) -> Result<i64> {
        reading!(self, pool => {
            Ok(sqlx::query_scalar("SELECT version FROM directory_version").fetch_one(pool).await?)
        })
    }

    /// Rebuilds the in-memory pen directory from the table (at start, and after clinic moves).
    pub async fn reload_directory(&self) -> Result<()> {
        reading!(self, pool => {
            // The version first: a change committed between the two reads is read again next time.
            let version = self.directory_version().await?;
            let rows = sqlx::query("SELECT p.pen_serial, p.clinic_id, c.chain_id, p.model FROM pens p LEFT JOIN clinics c ON c.clinic_id = p.clinic_id")
                .fetch_all(pool)
                .await?;
            let mut pens = HashMap::with_capacity(rows.len());
            for row in rows {
                let serial: String = row.column(0);
                let clinic: Option<String> = row.column(1);
                let chain: Option<String> = row.column(2);
                // Rows were validated on the way in; a row that no longer parses is skipped loudly.
                let (Ok(serial), Ok(clinic), Ok(chain)) = (
                    PenSerial::parse(&serial),
                    clinic.as_deref().map(ClinicId::parse).transpose(),
                    chain.as_deref().map(ChainId::parse).transpose(),
                ) else {
                    tracing::warn!(pen = %serial, "pen row with invalid identifiers left out of the directory");
                    continue;
                };
                pens.insert(serial, Arc::new(PenPlacement { clinic, chain, model: row.column(3) }));
            }
            self.directory.replace_all(pens, version);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::test_support::temp_store;
    use crate::Error;
    use penwarden_domain::access::Scope;
    use penwarden_domain::{ChainId, ClinicId, PenSerial};

    #[tokio::test]
    async fn registration_fills_the_directory() {
        let (store, _dir) = temp_store().await;
        let chain = ChainId::parse("chain-a").unwrap();
        let clinic = ClinicId::parse("clinic-1").unwrap();
        let pen = PenSerial::parse("PW-1").unwrap();
        store.register_chain(&chain, "Chain A", 1).await.unwrap();
        store.register_clinic(&clinic, &chain, "Clinic 1", 1).await.unwrap();
        let row = store.register_pen(&pen, Some(&clinic), "SP-2", "", 1).await.unwrap();
        assert_eq!(row.chain_id.as_deref(), Some("chain-a"));
        let placement = store.directory().get(&pen).unwrap();
        assert_eq!(placement.clinic, Some(clinic.clone()));
        assert_eq!(placement.chain, Some(chain.clone()));
        assert_eq!(store.list_pens(Some(&clinic), None, &Scope::All).await.unwrap().len(), 1);
        assert_eq!(store.list_pens(None, Some(&ChainId::parse("other").unwrap()), &Scope::All).await.unwrap().len(), 0);
    }

    #[tokio::test]
    async fn pens_are_seen_only_within_scope() {
        let (store, _dir) = temp_store().await;
        for (chain, clinic, pen, maker) in [("a", "a-1", "PW-A", "acme"), ("b", "b-1", "PW-B", "other")] {
            let chain = ChainId::parse(chain).unwrap();
            let clinic = ClinicId::parse(clinic).unwrap();
            store.register_chain(&chain, "", 1).await.unwrap();
            store.register_clinic(&clinic, &chain, "", 1).await.unwrap();
            store.register_pen(&PenSerial::parse(pen).unwrap(), Some(&clinic), "", maker, 1).await.unwrap();
        }
        let serials = |pens: Vec<crate::PenRow>| pens.into_iter().map(|p| p.pen_serial).collect::<Vec<_>>();
        let chain_a = Scope::Chain(ChainId::parse("a").unwrap());
        assert_eq!(serials(store.list_pens(None, None, &chain_a).await.unwrap()), ["PW-A"]);
        let clinic_b = Scope::Clinic(ClinicId::parse("b-1").unwrap());
        assert_eq!(serials(store.list_pens(None, None, &clinic_b).await.unwrap()), ["PW-B"]);
        let acme = Scope::Manufacturer("acme".into());
        assert_eq!(serials(store.list_pens(None, None, &acme).await.unwrap()), ["PW-A"]);
        assert_eq!(serials(store.list_pens(None, None, &Scope::All).await.unwrap()), ["PW-A", "PW-B"]);
        // Filters narrow; they never widen.
        let other_chain = ChainId::parse("b").unwrap();
        assert!(store.list_pens(None, Some(&other_chain), &chain_a).await.unwrap().is_empty());
        let pen_b = PenSerial::parse("PW-B").unwrap();
        assert!(matches!(store.pen_in_scope(&pen_b, &chain_a).await, Err(Error::NotFound(_))));
        assert!(store.pen_in_scope(&pen_b, &clinic_b).await.is_ok());
    }

    #[tokio::test]
    async fn clinic_needs_an_existing_chain() {
        let (store, _dir) = temp_store().await;
        let err = store
            .register_clinic(&ClinicId::parse("c").unwrap(), &ChainId::parse("missing").unwrap(), "x", 1)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::NotFound(_)));
    }
}

/// A cartridge lot as its manufacturer registered it.
#[derive(Debug, Clone, PartialEq)]
pub struct LotRow {
    pub gtin: String,
    pub lot: String,
    pub expiry: String,
    pub manufacturer_id: String,
    pub public_key: Vec<u8>,
    pub recalled_ms: Option<i64>,
}

impl Store {
    /// Registers (or updates) a lot with the manufacturer's Ed25519 public key.
    pub async fn register_lot(&self, lot: &LotRow, now_ms: i64) -> Result<LotRow> {
        writing!(self, pool => {
            penwarden_domain::compliance::check_manufacturer_key(&lot.public_key).map_err(Error::Invalid)?;
            sqlx::query(
                "INSERT INTO lots (gtin, lot, expiry, manufacturer_id, public_key, registered_ms) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (gtin, lot) DO UPDATE SET expiry = excluded.expiry,
                     manufacturer_id = excluded.manufacturer_id, public_key = excluded.public_key",
            )
            .bind(&lot.gtin)
            .bind(&lot.lot)
            .bind(&lot.expiry)
            .bind(&lot.manufacturer_id)
            .bind(&lot.public_key)
            .bind(now_ms)
            .execute(pool)
            .await?;
            Ok(lot.clone())
        })
    }

    /// A registered lot, if any.
    pub async fn lot(&self, gtin: &str, lot: &str) -> Result<Option<LotRow>> {
        Ok(self.lot_and_recall_reason(gtin, lot).await?.map(|(row, _)| row))
    }

    /// A registered lot and, if recalled, the reason given.
    pub(crate) async fn lot_and_recall_reason(
        &self,
        gtin: &str,
        lot: &str,
    ) -> Result<Option<(LotRow, Option<String>)>> {
        reading!(self, pool => {
            let row = sqlx::query(
                "SELECT gtin, lot, expiry, manufacturer_id, public_key, recalled_ms, recall_reason FROM lots
                 WHERE gtin = $1 AND lot = $2",
            )
            .bind(gtin)
            .bind(lot)
            .fetch_optional(pool)
            .await?;
            Ok(row.map(|row| {
                let lot = LotRow {
                    gtin: row.column(0),
                    lot: row.column(1),
                    expiry: row.column(2),
                    manufacturer_id: row.column(3),
                    public_key: row.column(4),
                    recalled_ms: row.column(5),
                };
                (lot, row.column(6))
            }))
        })
    }

    /// Registers (or updates) an operator's licence level (1 to 3).
    /// Registers an operator or changes its licence level. A new operator belongs to `owner`
    /// (the registering chain; None for an admin); a registered one keeps its owner.
    pub async fn register_operator(
        &self,
        operator: &OperatorId,
        licence_level: u8,
        owner: Option<&ChainId>,
        now_ms: i64,
    ) -> Result<()> {
        writing!(self, pool => {
            if !(1..=3).contains(&licence_level) {
                return Err(Error::Invalid(format!("licence_level must be 1, 2 or 3, got {licence_level}")));
            }
            sqlx::query(
                "INSERT INTO operators (operator_id, licence_level, owner_chain_id, registered_ms) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (operator_id) DO UPDATE SET licence_level = excluded.licence_level",
            )
            .bind(operator.as_str())
            .bind(i64::from(licence_level))
            .bind(owner.map(ChainId::as_str))
            .bind(now_ms)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The owner of a registered operator: None if it is not registered, Some(None) if an
    /// admin registered it, Some(Some(chain)) if a chain did.
    pub async fn operator_owner(&self, operator: &OperatorId) -> Result<Option<Option<String>>> {
        reading!(self, pool => {
            Ok(sqlx::query_scalar("SELECT owner_chain_id FROM operators WHERE operator_id = $1")
                .bind(operator.as_str())
                .fetch_optional(pool)
                .await?)
        })
    }

    /// Every GTIN and company prefix assigned to a manufacturer (a few per manufacturer): the
    /// domain's ownership rules decide which of them cover a GTIN.
    pub async fn gtin_assignments(&self) -> Result<Vec<GtinAssignment>> {
        reading!(self, pool => {
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT prefix, manufacturer_id FROM gtin_assignments ORDER BY prefix")
                    .fetch_all(pool)
                    .await?;
            Ok(rows.into_iter().map(|(prefix, manufacturer)| GtinAssignment { prefix, manufacturer }).collect())
        })
    }

    /// Assigns a GTIN or company prefix to a manufacturer (the caller has checked overlaps).
    pub async fn assign_gtin(&self, assignment: &GtinAssignment, now_ms: i64) -> Result<()> {
        writing!(self, pool => {
            sqlx::query(
                "INSERT INTO gtin_assignments (prefix, manufacturer_id, assigned_ms) VALUES ($1, $2, $3)
                 ON CONFLICT (prefix) DO UPDATE SET manufacturer_id = excluded.manufacturer_id",
            )
            .bind(&assignment.prefix)
            .bind(&assignment.manufacturer)
            .bind(now_ms)
            .execute(pool)
            .await?;
            Ok(())
        })
    }

    /// The manufacturers of the lots registered under GTINs `prefix` covers.
    pub async fn lot_manufacturers_under(&self, prefix: &str) -> Result<Vec<String>> {
        reading!(self, pool => {
            let sql = if prefix.len() == 14 {
                "SELECT DISTINCT manufacturer_id FROM lots WHERE gtin = $1"
            } else {
                "SELECT DISTINCT manufacturer_id FROM lots WHERE substr(gtin, 2, length($1)) = $1"
            };
            Ok(sqlx::query_scalar(sql).bind(prefix).fetch_all(pool).await?)
        })
    }

    /// Recalls a lot. Retroactive: every session that ever used it is judged again and gets a
    /// CARTRIDGE_RECALLED violation, in one transaction with its time-series points.
    pub async fn recall_lot(
        &self,
        gtin: &str,
        lot: &str,
        reason: &str,
        now_ms: i64,
        outbox_lines: impl FnOnce(&Effects) -> Vec<String>,
    ) -> Result<Effects> {
        let effects = in_record_transaction!(self, record => {
            crate::record::recall_lot(record, (gtin, lot), reason, &self.thresholds, now_ms, outbox_lines).await?
        })?
        .ok_or_else(|| Error::NotFound(format!("lot {lot} of GTIN {gtin}")))?;
        self.announce_changes(&effects);
        Ok(effects)
    }
}
