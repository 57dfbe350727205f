//! ComplianceService: was this treatment safe, and where did this cartridge go.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use penwarden_domain::access::Scope;
use penwarden_domain::compliance::{Rule, Verdict};
use penwarden_domain::{CartridgeKey, ChainId, ClinicId, PenSerial, Udi};
use penwarden_proto::api::v1 as pb;
use penwarden_proto::api::v1::compliance_service_server::ComplianceService;
use penwarden_store::{ReportFilter, SessionView, Store, ViolationFilter, ViolationRow};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::audit::{audited, Auditor};
use crate::auth::{check_place_filters, Authenticator};
use crate::paging::{finish_page, page_size, parse_page_token, time_range};
use crate::status::{from_store, invalid_argument, optional, required};

/// Changes sent to a watcher per store read; more are read at once if there were more.
const WATCH_BATCH: u32 = 500;
/// Watchers also look for changes this often, for changes made by other processes sharing
/// the database, which the in-process notification does not see.
const WATCH_POLL: Duration = Duration::from_secs(1);

pub struct ComplianceApi {
    store: Store,
    auth: Arc<Authenticator>,
    audit: Auditor,
    shutdown: watch::Receiver<bool>,
}

impl ComplianceApi {
    pub(crate) fn new(store: Store, auth: Arc<Authenticator>, audit: Auditor, shutdown: watch::Receiver<bool>) -> Self {
        ComplianceApi { store, auth, audit, shutdown }
    }
}

fn cartridge_key(request: &pb::GetCartridgeRequest) -> Result<CartridgeKey, Status> {
    if !request.udi.is_empty() {
        return Udi::parse(&request.udi).map(|udi| udi.key()).map_err(|e| invalid_argument(format!("udi: {e}")));
    }
    if request.gtin.is_empty() || request.serial.is_empty() {
        return Err(invalid_argument("give either udi, or both gtin and serial"));
    }
    Ok(CartridgeKey { gtin: request.gtin.clone(), serial: request.serial.clone() })
}

fn session_message(session: SessionView) -> pb::Session {
    let verdict = match session.verdict {
        Verdict::Compliant => pb::Verdict::Compliant,
        Verdict::NonCompliant => pb::Verdict::NonCompliant,
        Verdict::Incomplete => pb::Verdict::Incomplete,
    };
    pb::Session {
        session_id: session.session_id,
        pen_serial: session.pen_serial,
        clinic_id: session.clinic_id.unwrap_or_default(),
        chain_id: session.chain_id.unwrap_or_default(),
        cartridge_gtin: session.cartridge_gtin.unwrap_or_default(),
        cartridge_serial: session.cartridge_serial.unwrap_or_default(),
        cartridge_lot: session.cartridge_lot.unwrap_or_default(),
        operator_id: session.operator_id.unwrap_or_default(),
        area: session.area.unwrap_or_default(),
        started_unix_ms: session.started_ms.unwrap_or_default(),
        ended_unix_ms: session.ended_ms.unwrap_or_default(),
        strokes: session.strokes.unwrap_or_default().max(0) as u64,
        motor_seconds: session.motor_seconds.unwrap_or_default(),
        max_depth_mm: session.max_depth_mm.unwrap_or_default(),
        verdict: verdict.into(),
        violated_rules: session.violated_rules,
    }
}

fn violation_message(row: ViolationRow) -> pb::Violation {
    pb::Violation {
        id: row.id,
        rule: row.rule,
        severity: row.severity,
        explanation: row.explanation,
        pen_serial: row.pen_serial,
        clinic_id: row.clinic_id.unwrap_or_default(),
        chain_id: row.chain_id.unwrap_or_default(),
        session_id: row.session_id,
        cartridge_gtin: row.cartridge_gtin.unwrap_or_default(),
        cartridge_serial: row.cartridge_serial.unwrap_or_default(),
        device_time_unix_ms: row.device_time_ms,
        detected_unix_ms: row.detected_ms,
        retracted_unix_ms: row.retracted_ms.unwrap_or_default(),
        retraction_reason: row.retraction_reason.unwrap_or_default(),
    }
}

/// The filters ListViolations and WatchViolations share, checked, within `scope`.
fn narrowed(
    scope: Scope,
    rule: &str,
    clinic_id: &str,
    chain_id: &str,
    pen_serial: &str,
) -> Result<ViolationFilter, Status> {
    if !rule.is_empty() && Rule::from_id(rule).is_none() {
        return Err(invalid_argument(format!("unknown rule {rule:?}")));
    }
    Ok(ViolationFilter {
        scope,
        clinic_id: optional("clinic_id", clinic_id, ClinicId::parse)?.map(|c| c.to_string()),
        chain_id: optional("chain_id", chain_id, ChainId::parse)?.map(|c| c.to_string()),
        pen_serial: optional("pen_serial", pen_serial, PenSerial::parse)?.map(|p| p.to_string()),
        rule: (!rule.is_empty()).then(|| rule.to_owned()),
        ..ViolationFilter::default()
    })
}

fn violation_filter(request: &pb::ListViolationsRequest, scope: Scope) -> Result<ViolationFilter, Status> {
    let limit = page_size(request.page_size)?;
    let (from_ms, to_ms) = time_range(request.from_unix_ms, request.to_unix_ms)?;
    Ok(ViolationFilter {
        from_ms,
        to_ms,
        include_retracted: request.include_retracted,
        before_id: parse_page_token(&request.page_token)?,
        limit,
        ..narrowed(scope, &request.rule, &request.clinic_id, &request.chain_id, &request.pen_serial)?
    })
}

/// A watcher's resume point: "c<change number>".
fn parse_cursor(cursor: &str) -> Result<Option<i64>, Status> {
    if cursor.is_empty() {
        return Ok(None);
    }
    cursor
        .strip_prefix('c')
        .and_then(|n| n.parse::<i64>().ok())
        .filter(|n| *n >= 0)
        .map(Some)
        .ok_or_else(|| invalid_argument("cursor is not one this server issued"))
}

fn watch_filter(request: &pb::WatchViolationsRequest, scope: Scope) -> Result<ViolationFilter, Status> {
    Ok(ViolationFilter {
        // A watcher must hear of retractions too.
        include_retracted: true,
        after_change_seq: parse_cursor(&request.cursor)?,
        limit: WATCH_BATCH,
        ..narrowed(scope, &request.rule, &request.clinic_id, &request.chain_id, &request.pen_serial)?
    })
}

/// Sends every change matching `filter` after its cursor, then waits for more, until the
/// watcher hangs up or the server shuts down.
async fn stream_changes(
    store: Store,
    mut filter: ViolationFilter,
    sender: mpsc::Sender<Result<pb::ViolationChange, Status>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut changes = store.subscribe_violation_changes();
    loop {
        // Marks the notification seen before reading, so a change committed during the read
        // wakes the next wait instead of being missed.
        changes.borrow_and_update();
        let rows = match store.list_violations(&filter).await {
            Ok(rows) => rows,
            Err(error) => {
                let _ = sender.send(Err(from_store(error))).await;
                return;
            }
        };
        let full_batch = rows.len() == filter.limit as usize;
        for row in rows {
            filter.after_change_seq = Some(row.change_seq);
            let cursor = format!("c{}", row.change_seq);
            let change = pb::ViolationChange { violation: Some(violation_message(row)), cursor };
            if sender.send(Ok(change)).await.is_err() {
                return;
            }
        }
        if full_batch {
            continue;
        }
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(WATCH_POLL) => {}
            _ = sender.closed() => return,
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

fn report_message(
    request: &pb::GetComplianceReportRequest,
    report: penwarden_store::ComplianceReportView,
) -> pb::ComplianceReport {
    let sessions = report.sessions.max(0) as u64;
    let rules = report
        .sessions_by_rule
        .iter()
        .map(|(rule, count)| {
            let count = (*count).max(0) as u64;
            pb::RuleRate {
                rule: rule.id().into(),
                severity: rule.severity().as_str().into(),
                sessions: count,
                rate: if sessions == 0 { 0.0 } else { count as f64 / sessions as f64 },
            }
        })
        .collect();
    pb::ComplianceReport {
        clinic_id: request.clinic_id.clone(),
        chain_id: request.chain_id.clone(),
        from_unix_ms: request.from_unix_ms,
        to_unix_ms: request.to_unix_ms,
        sessions,
        compliant_sessions: report.compliant.max(0) as u64,
        non_compliant_sessions: report.non_compliant.max(0) as u64,
        incomplete_sessions: report.incomplete.max(0) as u64,
        cartridges: report.cartridges.max(0) as u64,
        pens: report.pens.max(0) as u64,
        rules,
    }
}

#[tonic::async_trait]
impl ComplianceService for ComplianceApi {
    async fn get_cartridge(
        &self,
        request: Request<pb::GetCartridgeRequest>,
    ) -> Result<Response<pb::Cartridge>, Status> {
        audited!(self, request, "ComplianceService/GetCartridge", |_| 1, |scope| {
            let key = cartridge_key(request.get_ref())?;
            let view = self.store.cartridge(&key, &scope).await.map_err(from_store)?;
            let status = match view.sessions.iter().filter(|s| s.started_ms.is_some()).count() {
                0 => pb::CartridgeStatus::Unused,
                1 => pb::CartridgeStatus::Used,
                _ => pb::CartridgeStatus::Reused,
            };
            Ok(Response::new(pb::Cartridge {
                gtin: view.gtin,
                serial: view.serial,
                lot: view.lot,
                expiry: view.expiry,
                status: status.into(),
                sessions: view.sessions.into_iter().map(session_message).collect(),
            }))
        })
    }

    async fn get_pen_sterility(
        &self,
        request: Request<pb::GetPenSterilityRequest>,
    ) -> Result<Response<pb::PenSterility>, Status> {
        audited!(self, request, "ComplianceService/GetPenSterility", |_| 1, |scope| {
            let pen = required("pen_serial", &request.get_ref().pen_serial, PenSerial::parse)?;
            let view = self.store.pen_sterility(&pen, &scope).await.map_err(from_store)?;
            Ok(Response::new(pb::PenSterility {
                pen_serial: view.pen_serial,
                ready_to_treat: view.ready_to_treat,
                reasons: view.reasons,
                last_session_ended_unix_ms: view.last_session_ended_ms.unwrap_or_default(),
                last_disinfected_unix_ms: view.last_disinfected_ms.unwrap_or_default(),
                last_disinfection_changed_sheath: view.last_disinfection_changed_sheath,
            }))
        })
    }

    async fn list_violations(
        &self,
        request: Request<pb::ListViolationsRequest>,
    ) -> Result<Response<pb::ListViolationsResponse>, Status> {
        audited!(
            self,
            request,
            "ComplianceService/ListViolations",
            |r: &pb::ListViolationsResponse| r.violations.len(),
            |scope| {
                let mut filter = violation_filter(request.get_ref(), scope)?;
                check_place_filters(
                    &self.store,
                    &filter.scope,
                    filter.chain_id.as_deref(),
                    filter.clinic_id.as_deref(),
                )
                .await?;
                let page_size = filter.limit;
                // One extra row tells whether another page exists without a second query.
                filter.limit += 1;
                let mut rows = self.store.list_violations(&filter).await.map_err(from_store)?;
                let next_page_token = finish_page(&mut rows, page_size, |row| row.id);
                Ok(Response::new(pb::ListViolationsResponse {
                    violations: rows.into_iter().map(violation_message).collect(),
                    next_page_token,
                }))
            }
        )
    }

    type WatchViolationsStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ViolationChange, Status>> + Send>>;

    async fn watch_violations(
        &self,
        request: Request<pb::WatchViolationsRequest>,
    ) -> Result<Response<Self::WatchViolationsStream>, Status> {
        audited!(self, request, "ComplianceService/WatchViolations", |_| 0, |scope| {
            let mut filter = watch_filter(request.get_ref(), scope)?;
            check_place_filters(&self.store, &filter.scope, filter.chain_id.as_deref(), filter.clinic_id.as_deref())
                .await?;
            if filter.after_change_seq.is_none() {
                let start = if request.get_ref().from_beginning {
                    0
                } else {
                    self.store.latest_violation_change().await.map_err(from_store)?
                };
                filter.after_change_seq = Some(start);
            }
            let (sender, receiver) = mpsc::channel(WATCH_BATCH as usize);
            tokio::spawn(stream_changes(self.store.clone(), filter, sender, self.shutdown.clone()));
            let stream: Self::WatchViolationsStream = Box::pin(ReceiverStream::new(receiver));
            Ok(Response::new(stream))
        })
    }

    async fn trace_lot(&self, request: Request<pb::TraceLotRequest>) -> Result<Response<pb::LotTrace>, Status> {
        audited!(self, request, "ComplianceService/TraceLot", |r: &pb::LotTrace| r.sessions.len(), |scope| {
            let request = request.into_inner();
            if request.gtin.is_empty() || request.lot.is_empty() {
                return Err(invalid_argument("gtin and lot are required"));
            }
            let page_size = page_size(request.page_size)?;
            // Sessions of a lot page by position (oldest first); the token holds the offset.
            let offset = parse_page_token(&request.page_token)?.unwrap_or(0).max(0);
            let trace = self
                .store
                .trace_lot(&request.gtin, &request.lot, &scope, offset, page_size)
                .await
                .map_err(from_store)?;
            let next_offset = offset + trace.sessions.len() as i64;
            let next_page_token =
                if next_offset < trace.total_sessions { format!("v1.{next_offset}") } else { String::new() };
            let lot = trace.lot.as_ref();
            Ok(Response::new(pb::LotTrace {
                gtin: request.gtin,
                lot: request.lot,
                registered: lot.is_some(),
                manufacturer_id: lot.map(|l| l.manufacturer_id.clone()).unwrap_or_default(),
                expiry: lot.map(|l| l.expiry.clone()).unwrap_or_default(),
                recalled_unix_ms: lot.and_then(|l| l.recalled_ms).unwrap_or_default(),
                recall_reason: trace.recall_reason.unwrap_or_default(),
                clinics: trace
                    .clinics
                    .into_iter()
                    .map(|c| pb::LotClinicUse {
                        clinic_id: c.clinic_id.unwrap_or_default(),
                        chain_id: c.chain_id.unwrap_or_default(),
                        sessions: c.sessions.max(0) as u64,
                        cartridges: c.cartridges.max(0) as u64,
                        pens: c.pens.max(0) as u64,
                        first_started_unix_ms: c.first_started_ms.unwrap_or_default(),
                        last_started_unix_ms: c.last_started_ms.unwrap_or_default(),
                    })
                    .collect(),
                total_sessions: trace.total_sessions.max(0) as u64,
                sessions: trace.sessions.into_iter().map(session_message).collect(),
                next_page_token,
            }))
        })
    }

    async fn get_compliance_report(
        &self,
        request: Request<pb::GetComplianceReportRequest>,
    ) -> Result<Response<pb::ComplianceReport>, Status> {
        audited!(self, request, "ComplianceService/GetComplianceReport", |_| 1, |scope| {
            let request = request.into_inner();
            let clinic = optional("clinic_id", &request.clinic_id, ClinicId::parse)?;
            let chain = optional("chain_id", &request.chain_id, ChainId::parse)?;
            if clinic.is_some() && chain.is_some() {
                return Err(invalid_argument("give clinic_id or chain_id, not both"));
            }
            let (from_ms, to_ms) = time_range(request.from_unix_ms, request.to_unix_ms)?;
            let filter = ReportFilter {
                clinic_id: clinic.map(|c| c.to_string()),
                chain_id: chain.map(|c| c.to_string()),
                from_ms,
                to_ms,
            };
            check_place_filters(&self.store, &scope, filter.chain_id.as_deref(), filter.clinic_id.as_deref()).await?;
            let report = self.store.compliance_report(&filter, &scope).await.map_err(from_store)?;
            Ok(Response::new(report_message(&request, report)))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_filters_clearly() {
        let bad_rule = pb::ListViolationsRequest { rule: "NOPE".into(), ..Default::default() };
        assert_eq!(violation_filter(&bad_rule, Scope::All).unwrap_err().code(), tonic::Code::InvalidArgument);
        let too_big = pb::ListViolationsRequest { page_size: 5000, ..Default::default() };
        assert_eq!(violation_filter(&too_big, Scope::All).unwrap_err().code(), tonic::Code::InvalidArgument);
        let bad_token = pb::ListViolationsRequest { page_token: "x".into(), ..Default::default() };
        assert_eq!(violation_filter(&bad_token, Scope::All).unwrap_err().code(), tonic::Code::InvalidArgument);
        let inverted = pb::ListViolationsRequest { from_unix_ms: 5, to_unix_ms: 1, ..Default::default() };
        assert_eq!(violation_filter(&inverted, Scope::All).unwrap_err().code(), tonic::Code::InvalidArgument);
        let bad_pen = pb::ListViolationsRequest { pen_serial: "a/b".into(), ..Default::default() };
        assert_eq!(violation_filter(&bad_pen, Scope::All).unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn page_tokens_round_trip() {
        let request = pb::ListViolationsRequest { page_token: "v1.42".into(), ..Default::default() };
        let filter = violation_filter(&request, Scope::All).unwrap();
        assert_eq!(filter.before_id, Some(42));
        assert_eq!(filter.limit, crate::paging::DEFAULT_PAGE_SIZE);
    }

    #[test]
    fn watch_cursors_round_trip() {
        assert_eq!(parse_cursor("").unwrap(), None);
        assert_eq!(parse_cursor("c17").unwrap(), Some(17));
        for bad in ["17", "c", "c-1", "v1.17"] {
            assert_eq!(parse_cursor(bad).unwrap_err().code(), tonic::Code::InvalidArgument, "{bad}");
        }
    }

    #[test]
    fn cartridge_lookup_needs_udi_or_gtin_and_serial() {
        let neither = pb::GetCartridgeRequest::default();
        assert_eq!(cartridge_key(&neither).unwrap_err().code(), tonic::Code::InvalidArgument);
        let udi =
            pb::GetCartridgeRequest { udi: "(01)09506000134352(17)271231(10)L(21)S1".into(), ..Default::default() };
        assert_eq!(cartridge_key(&udi).unwrap().serial, "S1");
    }
}
