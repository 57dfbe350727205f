//! Aggregate reads: a lot traced to every session and clinic, and compliance reports.

use penwarden_domain::access::Scope;
use penwarden_domain::compliance::Rule;
use sqlx::{Database, Encode, QueryBuilder, Type};

use crate::backend::{reading, Column};

use crate::queries::{session_view, session_view_select};
use crate::scope::push_record_scope;
use crate::{Error, Result, SessionView, Store};

/// Where one clinic used a lot.
#[derive(Debug, Clone, PartialEq)]
pub struct LotClinicUse {
    pub clinic_id: Option<String>,
    pub chain_id: Option<String>,
    pub sessions: i64,
    pub cartridges: i64,
    pub pens: i64,
    pub first_started_ms: Option<i64>,
    pub last_started_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct LotTrace {
    /// `None` when no manufacturer registered the lot (its cartridges are then unverified).
    pub lot: Option<crate::LotRow>,
    pub recall_reason: Option<String>,
    /// Every clinic that used the lot, within scope.
    pub clinics: Vec<LotClinicUse>,
    pub total_sessions: i64,
    /// One page of the sessions, oldest first.
    pub sessions: Vec<SessionView>,
}

/// Counts over the sessions started in a time range, within a scope.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ComplianceReportView {
    pub sessions: i64,
    pub compliant: i64,
    pub non_compliant: i64,
    pub incomplete: i64,
    pub cartridges: i64,
    pub pens: i64,
    /// Per rule (every rule, zeros included): sessions with an active violation of it.
    pub sessions_by_rule: Vec<(Rule, i64)>,
}

/// Which sessions a report covers.
#[derive(Debug, Clone, Default)]
pub struct ReportFilter {
    pub clinic_id: Option<String>,
    pub chain_id: Option<String>,
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

impl ReportFilter {
    fn push_conditions<'a, DB: Database>(&self, query: &mut QueryBuilder<'a, DB>, scope: &Scope)
    where
        String: Encode<'a, DB> + Type<DB>,
        i64: Encode<'a, DB> + Type<DB>,
    {
        query.push(" WHERE s.started_ms IS NOT NULL");
        if let Some(clinic) = &self.clinic_id {
            query.push(" AND s.clinic_id = ").push_bind(clinic.clone());
        }
        if let Some(chain) = &self.chain_id {
            query.push(" AND s.chain_id = ").push_bind(chain.clone());
        }
        if let Some(from) = self.from_ms {
            query.push(" AND s.started_ms >= ").push_bind(from);
        }
        if let Some(to) = self.to_ms {
            query.push(" AND s.started_ms < ").push_bind(to);
        }
        push_record_scope(query, scope, "s");
    }
}

impl Store {
    /// Every session (a page of them) and every clinic that used a lot, within `scope`.
    pub async fn trace_lot(&self, gtin: &str, lot: &str, scope: &Scope, offset: i64, limit: u32) -> Result<LotTrace> {
        reading!(self, pool => {
            let (lot_row, recall_reason) = match self.lot_and_recall_reason(gtin, lot).await? {
                Some((row, reason)) => (Some(row), reason),
                None => (None, None),
            };

            let mut query = QueryBuilder::new(format!(
                "SELECT s.clinic_id, s.chain_id, COUNT(*), COUNT(DISTINCT s.cartridge_serial), COUNT(DISTINCT s.pen_serial),
                     MIN(s.started_ms), MAX(s.started_ms)
                 FROM sessions s{} WHERE s.cartridge_gtin = ",
                self.backend.dialect().indexed_by("sessions_lot")
            ));
            query.push_bind(gtin).push(" AND s.cartridge_lot = ").push_bind(lot);
            push_record_scope(&mut query, scope, "s");
            query.push(" GROUP BY s.clinic_id, s.chain_id ORDER BY s.chain_id, s.clinic_id");
            let clinics: Vec<LotClinicUse> = query
                .build()
                .fetch_all(pool)
                .await?
                .iter()
                .map(|row| LotClinicUse {
                    clinic_id: row.column(0),
                    chain_id: row.column(1),
                    sessions: row.column(2),
                    cartridges: row.column(3),
                    pens: row.column(4),
                    first_started_ms: row.column(5),
                    last_started_ms: row.column(6),
                })
                .collect();
            let total_sessions = clinics.iter().map(|c| c.sessions).sum();
            // A lot is there for its manufacturer and for whoever used it within their scope; to
            // anyone else it is not found, registered or not (its registration is not theirs).
            let own_lot = match scope {
                Scope::All => lot_row.is_some(),
                Scope::Manufacturer(own) => lot_row.as_ref().is_some_and(|row| row.manufacturer_id == *own),
                Scope::Chain(_) | Scope::Clinic(_) => false,
            };
            if !own_lot && total_sessions == 0 {
                return Err(Error::NotFound(format!("lot {lot} of GTIN {gtin}")));
            }

            // The lot's index, named: without statistics SQLite would take a scope's (chain_id,
            // started_ms) index for the ORDER BY and scan all of a chain's sessions.
            let mut query = QueryBuilder::new(session_view_select(self.backend.dialect(), "sessions_lot"));
            query
                .push(" WHERE s.cartridge_gtin = ")
                .push_bind(gtin)
                .push(" AND s.cartridge_lot = ")
                .push_bind(lot);
            push_record_scope(&mut query, scope, "s");
            query.push(" ORDER BY s.started_ms NULLS FIRST, s.pen_serial, s.session_id LIMIT ").push_bind(i64::from(limit));
            query.push(" OFFSET ").push_bind(offset);
            let sessions = query.build().fetch_all(pool).await?.iter().map(session_view).collect();
            Ok(LotTrace { lot: lot_row, recall_reason, clinics, total_sessions, sessions })
        })
    }

    /// Sessions started in the filter's range within `scope`, their verdicts, and per rule the
    /// sessions with an active violation of it.
    pub async fn compliance_report(&self, filter: &ReportFilter, scope: &Scope) -> Result<ComplianceReportView> {
        reading!(self, pool => {
            let gap = Rule::TelemetryGap.id();
            let mut query = QueryBuilder::new(
                "SELECT COUNT(*), COUNT(DISTINCT s.cartridge_gtin || '/' || s.cartridge_serial), COUNT(DISTINCT s.pen_serial),
                     COALESCE(SUM(CASE WHEN EXISTS (SELECT 1 FROM violations v WHERE v.pen_serial = s.pen_serial
                         AND v.session_id = s.session_id AND v.retracted_ms IS NULL AND v.rule <> ",
            );
            query.push_bind(gap).push(
                ") THEN 1 ELSE 0 END), 0),
                     COALESCE(SUM(CASE WHEN s.ended_ms IS NOT NULL AND NOT EXISTS (SELECT 1 FROM violations v
                         WHERE v.pen_serial = s.pen_serial AND v.session_id = s.session_id AND v.retracted_ms IS NULL)
                         THEN 1 ELSE 0 END), 0)
                 FROM sessions s",
            );
            filter.push_conditions(&mut query, scope);
            let row = query.build().fetch_one(pool).await?;
            let sessions: i64 = row.column(0);
            let non_compliant: i64 = row.column(3);
            let compliant: i64 = row.column(4);

            let mut query = QueryBuilder::new(
                "SELECT v.rule, COUNT(*) FROM violations v
                 JOIN sessions s ON s.pen_serial = v.pen_serial AND s.session_id = v.session_id",
            );
            filter.push_conditions(&mut query, scope);
            query.push(" AND v.retracted_ms IS NULL GROUP BY v.rule");
            let counted: Vec<(String, i64)> =
                query.build().fetch_all(pool).await?.iter().map(|row| (row.column(0), row.column(1))).collect();
            let sessions_by_rule = Rule::ALL
                .into_iter()
                .map(|rule| (rule, counted.iter().find(|(id, _)| id == rule.id()).map_or(0, |(_, n)| *n)))
                .collect();
            Ok(ComplianceReportView {
                sessions,
                compliant,
                non_compliant,
                incomplete: sessions - compliant - non_compliant,
                cartridges: row.column(1),
                pens: row.column(2),
                sessions_by_rule,
            })
        })
    }
}
