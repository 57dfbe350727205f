//! QuarantineService: what could not be accepted, and why, for operators.

use std::sync::Arc;

use penwarden_domain::PenSerial;
use penwarden_proto::api::v1 as pb;
use penwarden_proto::api::v1::quarantine_service_server::QuarantineService;
use penwarden_store::{QuarantineFilter, Store};
use tonic::{Request, Response, Status};

use crate::audit::{audited, Auditor};
use crate::auth::{require_admin, Authenticator};
use crate::paging::{finish_page, page_size, parse_page_token, time_range};
use crate::status::{from_store, invalid_argument, optional};

pub struct QuarantineApi {
    store: Store,
    auth: Arc<Authenticator>,
    audit: Auditor,
    replays: crate::Replays,
}

impl QuarantineApi {
    pub(crate) fn new(store: Store, auth: Arc<Authenticator>, audit: Auditor, replays: crate::Replays) -> Self {
        QuarantineApi { store, auth, audit, replays }
    }
}

/// Replays at most this many messages per request unless asked for fewer.
const DEFAULT_REPLAY_LIMIT: u32 = 10_000;

fn quarantine_filter(request: &pb::ListQuarantineRequest) -> Result<QuarantineFilter, Status> {
    let (from_ms, to_ms) = time_range(request.from_unix_ms, request.to_unix_ms)?;
    Ok(QuarantineFilter {
        reason: (!request.reason.is_empty()).then(|| request.reason.clone()),
        pen_serial: optional("pen_serial", &request.pen_serial, PenSerial::parse)?.map(|p| p.to_string()),
        from_ms,
        to_ms,
        before_id: parse_page_token(&request.page_token)?,
        limit: page_size(request.page_size)?,
    })
}

#[tonic::async_trait]
impl QuarantineService for QuarantineApi {
    async fn list_quarantine(
        &self,
        request: Request<pb::ListQuarantineRequest>,
    ) -> Result<Response<pb::ListQuarantineResponse>, Status> {
        audited!(
            self,
            request,
            "QuarantineService/ListQuarantine",
            |r: &pb::ListQuarantineResponse| r.messages.len(),
            |scope| {
                // Quarantined payloads can come from any pen of any chain: operators only.
                require_admin(&scope, "ListQuarantine")?;
                let mut filter = quarantine_filter(request.get_ref())?;
                let counts = self.store.quarantine_counts(&filter).await.map_err(from_store)?;
                let page_size = filter.limit;
                filter.limit += 1;
                let mut rows = self.store.list_quarantine(&filter).await.map_err(from_store)?;
                let next_page_token = finish_page(&mut rows, page_size, |row| row.id);
                Ok(Response::new(pb::ListQuarantineResponse {
                    messages: rows
                        .into_iter()
                        .map(|row| pb::QuarantinedMessage {
                            id: row.id,
                            received_unix_ms: row.received_ms,
                            topic: row.topic,
                            pen_serial: row.pen_serial.unwrap_or_default(),
                            reason: row.reason,
                            detail: row.detail,
                            payload_excerpt: row.payload_excerpt,
                            payload_len: row.payload_len.max(0) as u64,
                        })
                        .collect(),
                    next_page_token,
                    counts_by_reason: counts.into_iter().map(|(reason, count)| (reason, count.max(0) as u64)).collect(),
                }))
            }
        )
    }

    async fn replay_quarantine(
        &self,
        request: Request<pb::ReplayQuarantineRequest>,
    ) -> Result<Response<pb::ReplayQuarantineResponse>, Status> {
        audited!(
            self,
            request,
            "QuarantineService/ReplayQuarantine",
            |r: &pb::ReplayQuarantineResponse| r.replayed_ids.len(),
            |scope| {
                require_admin(&scope, "ReplayQuarantine")?;
                let request = request.into_inner();
                if request.reason.is_empty() {
                    return Err(invalid_argument("reason is required: replay one reason at a time, after review"));
                }
                let filter = QuarantineFilter {
                    reason: Some(request.reason.clone()),
                    pen_serial: optional("pen_serial", &request.pen_serial, PenSerial::parse)?.map(|p| p.to_string()),
                    from_ms: (request.since_unix_ms > 0).then_some(request.since_unix_ms),
                    limit: if request.limit == 0 { DEFAULT_REPLAY_LIMIT } else { request.limit },
                    ..QuarantineFilter::default()
                };
                let selection = self.store.replayable_quarantine(&filter).await.map_err(from_store)?;
                let mut replayed_ids = Vec::with_capacity(selection.messages.len());
                for message in selection.messages {
                    let id = message.id;
                    if self.replays.send(message).await.is_err() {
                        return Err(Status::unavailable("ingest is not running; nothing more was replayed"));
                    }
                    replayed_ids.push(id);
                }
                tracing::info!(
                    reason = %request.reason,
                    pen = %request.pen_serial,
                    since_unix_ms = request.since_unix_ms,
                    replayed = replayed_ids.len(),
                    already_replayed = selection.already_replayed,
                    not_replayable = selection.not_replayable,
                    "quarantined messages replayed"
                );
                Ok(Response::new(pb::ReplayQuarantineResponse {
                    replayed_ids,
                    already_replayed: selection.already_replayed,
                    not_replayable: selection.not_replayable,
                    left_for_later: selection.left_for_later,
                }))
            }
        )
    }
}
