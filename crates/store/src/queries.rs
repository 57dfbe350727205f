//! Reads for the API: cartridges, pen sterility, violations.

use penwarden_domain::access::Scope;
use penwarden_domain::compliance::{readiness, session_verdict, Rule, Verdict};
use penwarden_domain::{CartridgeKey, PenSerial};
use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::backend::{reading, writing, Column, Dialect, FromStoreRow, StoreRow};
use crate::record::{OpenRecord as _, RecordTx as _};
use crate::scope::push_record_scope;
use crate::statement::{SqlBuilder as _, Statement};
use crate::{Error, Result, Store};

/// The columns `session_view` reads (`s` is the sessions table), with the active violations'
/// rules.
fn session_view_columns(dialect: Dialect) -> String {
    format!(
        "s.pen_serial, s.session_id, s.clinic_id, s.chain_id, s.cartridge_gtin, s.cartridge_serial,
         s.cartridge_lot, s.operator_id, s.area, s.started_ms, s.ended_ms, s.strokes, s.motor_seconds,
         s.max_depth_mm,
         (SELECT {} FROM violations v
          WHERE v.pen_serial = s.pen_serial AND v.session_id = s.session_id AND v.retracted_ms IS NULL)",
        dialect.comma_list("v.rule")
    )
}

/// Sessions as `session_view` reads them; `index` names the index to read them by (SQLite).
pub(crate) fn session_view_select(dialect: Dialect, index: &str) -> String {
    format!("SELECT {} FROM sessions s{}", session_view_columns(dialect), dialect.indexed_by(index))
}

/// A cartridge with its lot's manufacturer (columns 15 to 17) and its sessions, one row per
/// session or one row of NULL session columns. The scope joins the sessions' ON clause, so the
/// cartridge row comes back either way. The index is named because without statistics SQLite
/// prefers a scope's (chain_id, started_ms) index for its ORDER BY, scanning all of a chain's
/// sessions to find one cartridge's.
fn cartridge_with_sessions(dialect: Dialect) -> String {
    format!(
        "SELECT {}, c.lot, c.expiry, l.manufacturer_id
         FROM cartridges c
         LEFT JOIN lots l ON l.gtin = c.gtin AND l.lot = c.lot
         LEFT JOIN sessions s{}
             ON s.cartridge_gtin = c.gtin AND s.cartridge_serial = c.serial",
        session_view_columns(dialect),
        dialect.indexed_by("sessions_cartridge")
    )
}

#[derive(Debug, Clone, PartialEq)]
pub struct SessionView {
    pub pen_serial: String,
    pub session_id: String,
    pub clinic_id: Option<String>,
    pub chain_id: Option<String>,
    pub cartridge_gtin: Option<String>,
    pub cartridge_serial: Option<String>,
    pub cartridge_lot: Option<String>,
    pub operator_id: Option<String>,
    pub area: Option<String>,
    pub started_ms: Option<i64>,
    pub ended_ms: Option<i64>,
    pub strokes: Option<i64>,
    pub motor_seconds: Option<f64>,
    pub max_depth_mm: Option<f64>,
    pub violated_rules: Vec<String>,
    pub verdict: Verdict,
}

#[derive(Debug, Clone, PartialEq)]
pub struct CartridgeView {
    pub gtin: String,
    pub serial: String,
    pub lot: String,
    pub expiry: String,
    pub sessions: Vec<SessionView>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct PenSterilityView {
    pub pen_serial: String,
    pub ready_to_treat: bool,
    pub reasons: Vec<String>,
    pub last_session_ended_ms: Option<i64>,
    pub last_disinfected_ms: Option<i64>,
    pub last_disinfection_changed_sheath: bool,
}

#[derive(Debug, Clone)]
pub struct ViolationFilter {
    /// What the caller may see; the request's own filters narrow it further.
    pub scope: Scope,
    pub clinic_id: Option<String>,
    pub chain_id: Option<String>,
    pub pen_serial: Option<String>,
    pub rule: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    pub include_retracted: bool,
    /// Only ids below this one (the page token: pages go newest first).
    pub before_id: Option<i64>,
    /// Watching: only changes after this change number, oldest change first.
    pub after_change_seq: Option<i64>,
    pub limit: u32,
}

impl Default for ViolationFilter {
    /// Everything (an admin's view), newest first, 100 rows.
    fn default() -> Self {
        ViolationFilter {
            scope: Scope::All,
            clinic_id: None,
            chain_id: None,
            pen_serial: None,
            rule: None,
            from_ms: None,
            to_ms: None,
            include_retracted: false,
            before_id: None,
            after_change_seq: None,
            limit: 100,
        }
    }
}

/// A quarantined message to feed to ingest again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayable {
    pub id: i64,
    pub topic: String,
    pub payload: Vec<u8>,
}

/// What a replay request selects.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplaySelection {
    pub messages: Vec<Replayable>,
    pub already_replayed: u64,
    pub not_replayable: u64,
    /// Replayable, beyond the request's limit: the next request takes them.
    pub left_for_later: u64,
}

#[derive(Debug, Clone, Default)]
pub struct QuarantineFilter {
    pub reason: Option<String>,
    pub pen_serial: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
    /// Only ids below this one (the page token: pages go newest first).
    pub before_id: Option<i64>,
    pub limit: u32,
}

impl QuarantineFilter {
    fn push_conditions<'a, DB: Database>(&self, query: &mut QueryBuilder<'a, DB>)
    where
        String: Encode<'a, DB> + Type<DB>,
        i64: Encode<'a, DB> + Type<DB>,
    {
        query.push(" WHERE 1 = 1");
        if let Some(reason) = &self.reason {
            query.push(" AND reason = ").push_bind(reason.clone());
        }
        if let Some(pen) = &self.pen_serial {
            query.push(" AND pen_serial = ").push_bind(pen.clone());
        }
        if let Some(from) = self.from_ms {
            query.push(" AND received_ms >= ").push_bind(from);
        }
        if let Some(to) = self.to_ms {
            query.push(" AND received_ms < ").push_bind(to);
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct QuarantineRow {
    pub id: i64,
    pub received_ms: i64,
    pub topic: String,
    pub pen_serial: Option<String>,
    pub reason: String,
    pub detail: String,
    pub payload_excerpt: String,
    pub payload_len: i64,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ViolationRow {
    pub id: i64,
    pub rule: String,
    pub severity: String,
    pub explanation: String,
    pub pen_serial: String,
    pub clinic_id: Option<String>,
    pub chain_id: Option<String>,
    pub session_id: String,
    pub cartridge_gtin: Option<String>,
    pub cartridge_serial: Option<String>,
    pub device_time_ms: i64,
    pub detected_ms: i64,
    pub retracted_ms: Option<i64>,
    pub retraction_reason: Option<String>,
    /// The number of its latest change (raised, or retracted): a watcher's cursor.
    pub change_seq: i64,
}

impl Store {
    /// A cartridge and the sessions of it `scope` may see. A cartridge the caller has no
    /// session of (and whose lot is not its own) is "not found", exactly like one that does not
    /// exist, so its existence elsewhere cannot be inferred.
    pub async fn cartridge(&self, key: &CartridgeKey, scope: &Scope) -> Result<CartridgeView> {
        let not_found = || Error::NotFound(format!("cartridge {key}"));
        // One query, not a cartridge query and a sessions query: GetCartridge is the API's
        // hottest call.
        let mut statement = Statement::new(&cartridge_with_sessions(self.backend.dialect()));
        push_record_scope(&mut statement, scope, "s");
        statement.push_sql(" WHERE c.gtin = ").push_text(&key.gtin);
        statement.push_sql(" AND c.serial = ").push_text(&key.serial);
        statement.push_sql(" ORDER BY s.started_ms NULLS FIRST, s.pen_serial");
        let rows: Vec<CartridgeRow> = self.backend.hot_read(statement).await?;
        let cartridge = rows.first().ok_or_else(not_found)?;
        let owns_lot = matches!(scope, Scope::Manufacturer(m) if cartridge.manufacturer.as_deref() == Some(m.as_str()));
        let (lot, expiry) = (cartridge.lot.clone(), cartridge.expiry.clone());
        let sessions: Vec<SessionView> = rows.into_iter().filter_map(|row| row.session).collect();
        if sessions.is_empty() && !owns_lot && *scope != Scope::All {
            return Err(not_found());
        }
        Ok(CartridgeView { gtin: key.gtin.clone(), serial: key.serial.clone(), lot, expiry, sessions })
    }

    /// Whether the pen may treat now, and why not: PEN_NOT_DISINFECTED's own walk over the pen's
    /// history since its last session started, so the API and the rule never disagree.
    pub async fn pen_sterility(&self, pen: &PenSerial, scope: &Scope) -> Result<PenSterilityView> {
        self.pen_in_scope(pen, scope).await?;
        reading!(self, pool => {
        let mut connection = pool.acquire().await?;
        // Everything from the last session start on (min_seq beyond any seq: the window's
        // anchor is the pen's last session start).
        let (facts, _) = connection.record().pen_window(pen, i64::MAX as u64).await?;
        let mut reasons = Vec::new();
        for reason in readiness(pen, &facts) {
            // The last session may be another tenant's, if the pen moved: named only if visible.
            let mut visible: QueryBuilder<'_, _> =
                QueryBuilder::new("SELECT EXISTS (SELECT 1 FROM sessions s WHERE s.pen_serial = ");
            visible.push_bind(pen.as_str()).push(" AND s.session_id = ").push_bind(reason.session().as_str());
            push_record_scope(&mut visible, scope, "s");
            visible.push(")");
            let visible: bool = visible.build_query_scalar().fetch_one(&mut *connection).await?;
            reasons.push(reason.describe(visible));
        }
        let last_session_ended_ms = sqlx::query_scalar(
            "SELECT ended_ms FROM sessions WHERE pen_serial = $1 AND start_seq IS NOT NULL ORDER BY start_seq DESC LIMIT 1",
        )
        .bind(pen.as_str())
        .fetch_optional(&mut *connection)
        .await?
        .flatten();
        let last_disinfection = sqlx::query(
            "SELECT device_time_ms, sheath_changed FROM pen_events
             WHERE pen_serial = $1 AND kind = 'disinfected' ORDER BY seq DESC LIMIT 1",
        )
        .bind(pen.as_str())
        .fetch_optional(&mut *connection)
        .await?;
        Ok(PenSterilityView {
            pen_serial: pen.to_string(),
            ready_to_treat: reasons.is_empty(),
            reasons,
            last_session_ended_ms,
            last_disinfected_ms: last_disinfection.as_ref().map(|r| r.column(0)),
            last_disinfection_changed_sheath: last_disinfection
                .as_ref()
                .is_some_and(|r| Column::<Option<bool>>::column(r, 1).unwrap_or(false)),
        })
        })
    }

    /// The quarantined messages `filter` selects (newest first, at most `filter.limit`) that
    /// can be replayed: whole payload kept, not replayed yet; and how many it selects that
    /// were replayed already or cannot be (payload cut for size, or not a message).
    pub async fn replayable_quarantine(&self, filter: &QuarantineFilter) -> Result<ReplaySelection> {
        reading!(self, pool => {
            let mut counts: QueryBuilder<'_, _> = QueryBuilder::new(
                "SELECT COUNT(replayed_ms),
                     COUNT(CASE WHEN replayed_ms IS NULL AND payload IS NULL THEN 1 END),
                     COUNT(CASE WHEN replayed_ms IS NULL AND payload IS NOT NULL THEN 1 END)
                 FROM quarantine",
            );
            filter.push_conditions(&mut counts);
            let counts = counts.build().fetch_one(pool).await?;
            let mut query: QueryBuilder<'_, _> = QueryBuilder::new("SELECT id, topic, payload FROM quarantine");
            filter.push_conditions(&mut query);
            query.push(" AND replayed_ms IS NULL AND payload IS NOT NULL ORDER BY id LIMIT ");
            query.push_bind(i64::from(filter.limit));
            let messages: Vec<Replayable> = query
                .build()
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| Replayable { id: row.column(0), topic: row.column(1), payload: row.column(2) })
                .collect();
            let replayable = Column::<i64>::column(&counts, 2).max(0) as u64;
            Ok(ReplaySelection {
                left_for_later: replayable.saturating_sub(messages.len() as u64),
                messages,
                already_replayed: Column::<i64>::column(&counts, 0).max(0) as u64,
                not_replayable: Column::<i64>::column(&counts, 1).max(0) as u64,
            })
        })
    }

    /// Records that these quarantined messages went through ingest again.
    pub async fn mark_replayed(&self, ids: &[i64], now_ms: i64) -> Result<()> {
        writing!(self, pool => {
            if ids.is_empty() {
                return Ok(());
            }
            let mut query: QueryBuilder<'_, _> = QueryBuilder::new("UPDATE quarantine SET replayed_ms = ");
            query.push_bind(now_ms).push(" WHERE replayed_ms IS NULL AND id IN (");
            let mut ids_list = query.separated(", ");
            for id in ids {
                ids_list.push_bind(*id);
            }
            query.push(")");
            query.build().execute(pool).await?;
            Ok(())
        })
    }

    /// Violations newest first (by id), filtered.
    pub async fn list_violations(&self, filter: &ViolationFilter) -> Result<Vec<ViolationRow>> {
        let mut query = Statement::new("SELECT id, rule, severity, ");
        if filter.scope == Scope::All {
            query.push_sql("explanation");
        } else {
            // The explanation may name another session: shown only if the caller may see that
            // session too (another chain's pen and timing are not this caller's to read).
            query.push_sql(
                "CASE WHEN related_session_id IS NULL OR EXISTS (SELECT 1 FROM sessions related
                     WHERE related.pen_serial = violations.related_pen
                       AND related.session_id = violations.related_session_id",
            );
            push_record_scope(&mut query, &filter.scope, "related");
            query.push_sql(") THEN explanation END");
        }
        query.push_sql(
            ",
                 pen_serial, clinic_id, chain_id, session_id, cartridge_gtin,
                 cartridge_serial, device_time_ms, detected_ms, retracted_ms, retraction_reason,
                 COALESCE(change_seq, id)
             FROM violations WHERE 1 = 1",
        );
        push_record_scope(&mut query, &filter.scope, "violations");
        if let Some(clinic) = &filter.clinic_id {
            query.push_sql(" AND clinic_id = ").push_text(clinic);
        }
        if let Some(chain) = &filter.chain_id {
            query.push_sql(" AND chain_id = ").push_text(chain);
        }
        if let Some(pen) = &filter.pen_serial {
            query.push_sql(" AND pen_serial = ").push_text(pen);
        }
        if let Some(rule) = &filter.rule {
            query.push_sql(" AND rule = ").push_text(rule);
        }
        if let Some(from) = filter.from_ms {
            query.push_sql(" AND device_time_ms >= ").push_int(from);
        }
        if let Some(to) = filter.to_ms {
            query.push_sql(" AND device_time_ms < ").push_int(to);
        }
        if !filter.include_retracted {
            query.push_sql(" AND retracted_ms IS NULL");
        }
        if let Some(before) = filter.before_id {
            query.push_sql(" AND id < ").push_int(before);
        }
        match filter.after_change_seq {
            Some(after) => query.push_sql(" AND change_seq > ").push_int(after).push_sql(" ORDER BY change_seq"),
            None => query.push_sql(" ORDER BY id DESC"),
        };
        query.push_sql(" LIMIT ").push_int(i64::from(filter.limit));
        self.backend.hot_read(query).await
    }

    /// Quarantined messages, newest first, filtered.
    pub async fn list_quarantine(&self, filter: &QuarantineFilter) -> Result<Vec<QuarantineRow>> {
        reading!(self, pool => {
            let mut query: QueryBuilder<'_, _> = QueryBuilder::new(
                "SELECT id, received_ms, topic, pen_serial, reason, detail, payload_excerpt, payload_len FROM quarantine",
            );
            filter.push_conditions(&mut query);
            if let Some(before) = filter.before_id {
                query.push(" AND id < ").push_bind(before);
            }
            query.push(" ORDER BY id DESC LIMIT ").push_bind(i64::from(filter.limit));
            let rows = query.build().fetch_all(pool).await?;
            Ok(rows
                .iter()
                .map(|row| QuarantineRow {
                    id: row.column(0),
                    received_ms: row.column(1),
                    topic: row.column(2),
                    pen_serial: row.column(3),
                    reason: row.column(4),
                    detail: row.column(5),
                    payload_excerpt: row.column(6),
                    payload_len: row.column(7),
                })
                .collect())
        })
    }

    /// Quarantined messages matching the filter (pagination ignored), counted by reason.
    pub async fn quarantine_counts(&self, filter: &QuarantineFilter) -> Result<Vec<(String, i64)>> {
        reading!(self, pool => {
            let mut query: QueryBuilder<'_, _> = QueryBuilder::new("SELECT reason, COUNT(*) FROM quarantine");
            filter.push_conditions(&mut query);
            query.push(" GROUP BY reason ORDER BY reason");
            let rows = query.build().fetch_all(pool).await?;
            Ok(rows.iter().map(|row| (row.column(0), row.column(1))).collect())
        })
    }

    /// The newest violation change number (0 when none): where a new watcher starts.
    pub async fn latest_violation_change(&self) -> Result<i64> {
        reading!(self, pool => {
            Ok(sqlx::query_scalar("SELECT COALESCE(MAX(change_seq), 0) FROM violations").fetch_one(pool).await?)
        })
    }

    /// Device events recorded (each (pen, seq) once).
    pub async fn event_count(&self) -> Result<i64> {
        reading!(self, pool => {
            Ok(sqlx::query_scalar("SELECT COUNT(*) FROM pen_events").fetch_one(pool).await?)
        })
    }
}

/// A row of `cartridge_with_sessions`: the cartridge's columns, and a session unless the
/// cartridge has none the caller may see.
struct CartridgeRow {
    session: Option<SessionView>,
    lot: String,
    expiry: String,
    manufacturer: Option<String>,
}

impl FromStoreRow for CartridgeRow {
    fn from_row(row: &impl StoreRow) -> Self {
        let session_id: Option<String> = row.column(1);
        CartridgeRow {
            session: session_id.map(|_| session_view(row)),
            lot: row.column(15),
            expiry: row.column(16),
            manufacturer: row.column(17),
        }
    }
}

impl FromStoreRow for ViolationRow {
    fn from_row(row: &impl StoreRow) -> Self {
        ViolationRow {
            id: row.column(0),
            rule: row.column(1),
            severity: row.column(2),
            explanation: Column::<Option<String>>::column(row, 3).unwrap_or_else(|| {
                let rule: String = row.column(1);
                Rule::from_id(&rule).map_or("", Rule::explanation_without_related).to_owned()
            }),
            pen_serial: row.column(4),
            clinic_id: row.column(5),
            chain_id: row.column(6),
            session_id: row.column(7),
            cartridge_gtin: row.column(8),
            cartridge_serial: row.column(9),
            device_time_ms: row.column(10),
            detected_ms: row.column(11),
            retracted_ms: row.column(12),
            retraction_reason: row.column(13),
            change_seq: row.column(14),
        }
    }
}

pub(crate) fn session_view(row: &impl StoreRow) -> SessionView {
    let violated_rules: Vec<String> = Column::<Option<String>>::column(row, 14)
        .map(|rules| rules.split(',').map(str::to_owned).collect())
        .unwrap_or_default();
    let started_ms: Option<i64> = row.column(9);
    let ended_ms: Option<i64> = row.column(10);
    SessionView {
        pen_serial: row.column(0),
        session_id: row.column(1),
        clinic_id: row.column(2),
        chain_id: row.column(3),
        cartridge_gtin: row.column(4),
        cartridge_serial: row.column(5),
        cartridge_lot: row.column(6),
        operator_id: row.column(7),
        area: row.column(8),
        started_ms,
        ended_ms,
        strokes: row.column(11),
        motor_seconds: row.column(12),
        max_depth_mm: row.column(13),
        verdict: session_verdict(
            started_ms.is_some(),
            ended_ms.is_some(),
            &violated_rules.iter().filter_map(|id| Rule::from_id(id)).collect::<Vec<_>>(),
        ),
        violated_rules,
    }
}
