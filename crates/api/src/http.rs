//! The API over HTTP with JSON, for a browser and for whoever does not speak gRPC: the gRPC
//! services' own code, called in-process, so keys, roles, scopes, rate limits and the audit
//! trail are the same; bodies in the protobuf JSON mapping (the generated pbjson impls), so a
//! field is named and shaped as in every other protobuf JSON client.
//!
//! - `POST /api/v1/{Service}/{Method}` with the request message as JSON answers the response
//!   message as JSON, e.g. `POST /api/v1/ComplianceService/GetCartridge {"gtin": "…",
//!   "serial": "…"}`. gRPC errors become HTTP statuses with `{"code", "message"}`.
//! - `GET /api/v1/ComplianceService/WatchViolations?cursor=…&rule=…` is a stream of
//!   server-sent events, one per violation change, each with the change's cursor as its id:
//!   a browser's EventSource resumes after a reconnect from `Last-Event-ID` by itself.
//!
//! The key travels in `Authorization: Bearer <token>`, never in a URL.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use penwarden_proto::api::v1 as api;
use penwarden_proto::api::v1::audit_service_server::AuditService;
use penwarden_proto::api::v1::compliance_service_server::ComplianceService;
use penwarden_proto::api::v1::fleet_service_server::FleetService;
use penwarden_proto::api::v1::quarantine_service_server::QuarantineService;
use tokio_stream::StreamExt;

use crate::{AuditApi, ComplianceApi, FleetApi, QuarantineApi};

/// The services the HTTP API calls: the very instances gRPC serves.
#[derive(Clone)]
pub(crate) struct Services {
    pub(crate) compliance: Arc<ComplianceApi>,
    pub(crate) fleet: Arc<FleetApi>,
    pub(crate) quarantine: Arc<QuarantineApi>,
    pub(crate) audit: Arc<AuditApi>,
}

pub(crate) fn router(services: Services) -> Router {
    Router::new()
        .route("/api/v1/{service}/{method}", post(call))
        .route("/api/v1/ComplianceService/WatchViolations", get(watch))
        .merge(crate::console::router())
        .with_state(services)
}

/// A gRPC request carrying the HTTP request's credentials.
fn request<T>(message: T, headers: &HeaderMap) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(value) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        if let Ok(value) = value.parse() {
            request.metadata_mut().insert("authorization", value);
        }
    }
    request
}

/// Decodes the body as the method's request message, calls the method, and answers its
/// response or error as JSON.
macro_rules! unary {
    ($service:expr, $trait:ident :: $method:ident, $body:expr, $headers:expr) => {{
        match serde_json::from_slice(if $body.is_empty() { b"{}" } else { &$body[..] }) {
            Ok(message) => match $trait::$method(&**$service, request(message, &$headers)).await {
                Ok(response) => Json(response.into_inner()).into_response(),
                Err(status) => error(&status),
            },
            Err(e) => error(&tonic::Status::invalid_argument(format!("the body is not this request in JSON: {e}"))),
        }
    }};
}

async fn call(
    State(services): State<Services>,
    Path((service, method)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (c, f, q, a) = (&services.compliance, &services.fleet, &services.quarantine, &services.audit);
    match (service.as_str(), method.as_str()) {
        ("ComplianceService", "GetCartridge") => unary!(c, ComplianceService::get_cartridge, body, headers),
        ("ComplianceService", "GetPenSterility") => unary!(c, ComplianceService::get_pen_sterility, body, headers),
        ("ComplianceService", "ListViolations") => unary!(c, ComplianceService::list_violations, body, headers),
        ("ComplianceService", "TraceLot") => unary!(c, ComplianceService::trace_lot, body, headers),
        ("ComplianceService", "GetComplianceReport") => {
            unary!(c, ComplianceService::get_compliance_report, body, headers)
        }
        ("FleetService", "RegisterChain") => unary!(f, FleetService::register_chain, body, headers),
        ("FleetService", "RegisterClinic") => unary!(f, FleetService::register_clinic, body, headers),
        ("FleetService", "RegisterPen") => unary!(f, FleetService::register_pen, body, headers),
        ("FleetService", "ListPens") => unary!(f, FleetService::list_pens, body, headers),
        ("FleetService", "RegisterLot") => unary!(f, FleetService::register_lot, body, headers),
        ("FleetService", "AssignGtin") => unary!(f, FleetService::assign_gtin, body, headers),
        ("FleetService", "RegisterOperator") => unary!(f, FleetService::register_operator, body, headers),
        ("FleetService", "RecallLot") => unary!(f, FleetService::recall_lot, body, headers),
        ("QuarantineService", "ListQuarantine") => unary!(q, QuarantineService::list_quarantine, body, headers),
        ("QuarantineService", "ReplayQuarantine") => unary!(q, QuarantineService::replay_quarantine, body, headers),
        ("AuditService", "ListAuditEvents") => unary!(a, AuditService::list_audit_events, body, headers),
        ("ComplianceService", "WatchViolations") => {
            error(&tonic::Status::invalid_argument("WatchViolations is a stream: GET it (server-sent events)"))
        }
        _ => error(&tonic::Status::unimplemented(format!("no method {service}/{method}"))),
    }
}

/// WatchViolations' filters and cursor, from the query string.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct WatchQuery {
    clinic_id: String,
    chain_id: String,
    pen_serial: String,
    rule: String,
    cursor: String,
    from_beginning: bool,
}

async fn watch(State(services): State<Services>, Query(query): Query<WatchQuery>, headers: HeaderMap) -> Response {
    // A browser's EventSource sends the id of the last event it saw when it reconnects.
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let message = api::WatchViolationsRequest {
        clinic_id: query.clinic_id,
        chain_id: query.chain_id,
        pen_serial: query.pen_serial,
        rule: query.rule,
        from_beginning: query.from_beginning && resume.is_none() && query.cursor.is_empty(),
        cursor: resume.unwrap_or(query.cursor),
    };
    match ComplianceService::watch_violations(&*services.compliance, request(message, &headers)).await {
        Ok(response) => {
            let events = response.into_inner().map(|change| {
                Ok::<_, Infallible>(match change {
                    Ok(change) => Event::default()
                        .id(change.cursor.clone())
                        .event("violation")
                        .json_data(&change)
                        .unwrap_or_else(|_| Event::default().event("error").data("cannot encode a change")),
                    Err(status) => Event::default().event("error").data(status.message()),
                })
            });
            Sse::new(events).keep_alive(KeepAlive::default()).into_response()
        }
        Err(status) => error(&status),
    }
}

/// A gRPC status as an HTTP status and `{"code": "NOT_FOUND", "message": "…"}`.
fn error(status: &tonic::Status) -> Response {
    use tonic::Code;
    let http = match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_FOUND,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let code = format!("{:?}", status.code());
    let body = serde_json::json!({ "code": screaming_snake(&code), "message": status.message() });
    (http, Json(body)).into_response()
}

/// `NotFound` as gRPC's status names spell it: `NOT_FOUND`.
fn screaming_snake(name: &str) -> String {
    let mut out = String::new();
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn status_names_read_as_grpc_spells_them() {
        assert_eq!(super::screaming_snake("NotFound"), "NOT_FOUND");
        assert_eq!(super::screaming_snake("Unauthenticated"), "UNAUTHENTICATED");
        assert_eq!(super::screaming_snake("ResourceExhausted"), "RESOURCE_EXHAUSTED");
    }
}
