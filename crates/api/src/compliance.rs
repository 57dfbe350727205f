//! ComplianceService: was this treatment safe, and where did this cartridge go.

use penwarden_domain::compliance::{Rule, Verdict};
use penwarden_domain::{CartridgeKey, ChainId, ClinicId, PenSerial, Udi};
use penwarden_proto::api::v1 as pb;
use penwarden_proto::api::v1::compliance_service_server::ComplianceService;
use penwarden_store::{SessionView, Store, ViolationFilter, ViolationRow};
use tonic::{Request, Response, Status};

use crate::paging::{finish_page, page_size, parse_page_token, time_range};
use crate::status::{from_store, optional, required};

pub struct ComplianceApi {
    store: Store,
}

impl ComplianceApi {
    pub fn new(store: Store) -> Self {
        ComplianceApi { store }
    }
}

fn cartridge_key(request: &pb::GetCartridgeRequest) -> Result<CartridgeKey, Status> {
    if !request.udi.is_empty() {
        return Udi::parse(&request.udi)
            .map(|udi| udi.key())
            .map_err(|e| Status::invalid_argument(format!("udi: {e}")));
    }
    if request.gtin.is_empty() || request.serial.is_empty() {
        return Err(Status::invalid_argument("give either udi, or both gtin and serial"));
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

fn violation_filter(request: &pb::ListViolationsRequest) -> Result<ViolationFilter, Status> {
    let page_size = page_size(request.page_size)?;
    if !request.rule.is_empty() && Rule::from_id(&request.rule).is_none() {
        return Err(Status::invalid_argument(format!("unknown rule {:?}", request.rule)));
    }
    let (from, to) = time_range(request.from_unix_ms, request.to_unix_ms)?;
    Ok(ViolationFilter {
        clinic_id: optional("clinic_id", &request.clinic_id, ClinicId::parse)?.map(|c| c.to_string()),
        chain_id: optional("chain_id", &request.chain_id, ChainId::parse)?.map(|c| c.to_string()),
        pen_serial: optional("pen_serial", &request.pen_serial, PenSerial::parse)?.map(|p| p.to_string()),
        rule: (!request.rule.is_empty()).then(|| request.rule.clone()),
        from_ms: from,
        to_ms: to,
        include_retracted: request.include_retracted,
        before_id: parse_page_token(&request.page_token)?,
        limit: page_size,
    })
}

#[tonic::async_trait]
impl ComplianceService for ComplianceApi {
    async fn get_cartridge(
        &self,
        request: Request<pb::GetCartridgeRequest>,
    ) -> Result<Response<pb::Cartridge>, Status> {
        let key = cartridge_key(request.get_ref())?;
        let view = self.store.cartridge(&key).await.map_err(from_store)?;
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
    }

    async fn get_pen_sterility(
        &self,
        request: Request<pb::GetPenSterilityRequest>,
    ) -> Result<Response<pb::PenSterility>, Status> {
        let pen = required("pen_serial", &request.get_ref().pen_serial, PenSerial::parse)?;
        let view = self.store.pen_sterility(&pen).await.map_err(from_store)?;
        Ok(Response::new(pb::PenSterility {
            pen_serial: view.pen_serial,
            ready_to_treat: view.ready_to_treat,
            reasons: view.reasons,
            last_session_ended_unix_ms: view.last_session_ended_ms.unwrap_or_default(),
            last_disinfected_unix_ms: view.last_disinfected_ms.unwrap_or_default(),
            last_disinfection_changed_sheath: view.last_disinfection_changed_sheath,
        }))
    }

    async fn list_violations(
        &self,
        request: Request<pb::ListViolationsRequest>,
    ) -> Result<Response<pb::ListViolationsResponse>, Status> {
        let mut filter = violation_filter(request.get_ref())?;
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_filters_clearly() {
        let bad_rule = pb::ListViolationsRequest { rule: "NOPE".into(), ..Default::default() };
        assert_eq!(violation_filter(&bad_rule).unwrap_err().code(), tonic::Code::InvalidArgument);
        let too_big = pb::ListViolationsRequest { page_size: 5000, ..Default::default() };
        assert_eq!(violation_filter(&too_big).unwrap_err().code(), tonic::Code::InvalidArgument);
        let bad_token = pb::ListViolationsRequest { page_token: "x".into(), ..Default::default() };
        assert_eq!(violation_filter(&bad_token).unwrap_err().code(), tonic::Code::InvalidArgument);
        let inverted = pb::ListViolationsRequest { from_unix_ms: 5, to_unix_ms: 1, ..Default::default() };
        assert_eq!(violation_filter(&inverted).unwrap_err().code(), tonic::Code::InvalidArgument);
        let bad_pen = pb::ListViolationsRequest { pen_serial: "a/b".into(), ..Default::default() };
        assert_eq!(violation_filter(&bad_pen).unwrap_err().code(), tonic::Code::InvalidArgument);
    }

    #[test]
    fn page_tokens_round_trip() {
        let request = pb::ListViolationsRequest { page_token: "v1.42".into(), ..Default::default() };
        let filter = violation_filter(&request).unwrap();
        assert_eq!(filter.before_id, Some(42));
        assert_eq!(filter.limit, crate::paging::DEFAULT_PAGE_SIZE);
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
