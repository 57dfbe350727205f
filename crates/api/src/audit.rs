//! The audit trail of the API: every call (key id, role, scope, method, the request's fields,
//! status, records returned, time) is appended to the store's hash chain, and admins page
//! through it with ListAuditEvents.
//!
//! Recording a call is a send on a channel; one task appends what arrived in batches (one
//! transaction per batch), so the audit costs a request a JSON encoding, not a write. The
//! channel is bounded: if the store stalls, calls wait rather than go unrecorded.

use std::sync::Arc;
use std::time::Duration;

use penwarden_domain::access::Scope;
use penwarden_domain::audit::{AuditCall, ChainHead};
use penwarden_proto::api::v1 as pb;
use penwarden_proto::api::v1::audit_service_server::AuditService;
use penwarden_store::Store;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::auth::{require_admin, Authenticator};
use crate::status::{from_store, invalid_argument};

/// Entries waiting to be appended, at most.
const QUEUE: usize = 65_536;
/// Entries per append, at most.
const BATCH: usize = 2_000;
/// Appends start at most this often: each is a transaction (an fsync), and under load a
/// fuller batch costs far less per entry than many small ones.
const APPEND_INTERVAL: Duration = Duration::from_millis(100);
/// How often the chain's head is written to the log when it moved.
const HEAD_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Where calls are recorded.
#[derive(Clone)]
pub(crate) struct Auditor {
    entries: mpsc::Sender<AuditCall>,
}

impl Auditor {
    /// The auditor and the task that appends what it records; the task ends, after appending
    /// everything, when every auditor is dropped.
    pub(crate) fn start(store: Store) -> (Auditor, tokio::task::JoinHandle<()>) {
        let (entries, receive) = mpsc::channel(QUEUE);
        (Auditor { entries }, tokio::spawn(append(store, receive)))
    }

    pub(crate) async fn record(&self, entry: AuditCall) {
        if self.entries.send(entry).await.is_err() {
            tracing::error!("the audit trail's writer has stopped; an API call went unrecorded");
        }
    }
}

async fn append(store: Store, mut receive: mpsc::Receiver<AuditCall>) {
    let mut batch = Vec::with_capacity(BATCH);
    let mut logged_head: Option<ChainHead> = None;
    let mut last_log = tokio::time::Instant::now();
    let mut next_append = tokio::time::Instant::now();
    while receive.recv_many(&mut batch, BATCH).await > 0 {
        // Let the batch fill until the next append is due (or it is full).
        while batch.len() < BATCH {
            let wait = tokio::time::sleep_until(next_append);
            let room = BATCH - batch.len();
            tokio::select! {
                _ = wait => break,
                received = receive.recv_many(&mut batch, room) => if received == 0 { break },
            }
        }
        next_append = tokio::time::Instant::now() + APPEND_INTERVAL;
        let mut backoff = Duration::from_millis(50);
        let head = loop {
            match store.append_audit(&batch).await {
                Ok(head) => break head,
                Err(error) => {
                    // Never dropped: the entries wait (and so, once the queue is full, do calls).
                    tracing::error!(%error, entries = batch.len(), "cannot append to the audit trail; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        };
        batch.clear();
        if let Some(head) = head {
            metrics::gauge!("penwarden_audit_head_seq").set(head.seq as f64);
            metrics::gauge!("penwarden_audit_head_hash52").set(head.hash_prefix_value());
            if logged_head.is_none() || last_log.elapsed() >= HEAD_LOG_INTERVAL {
                publish_head(&head);
                (logged_head, last_log) = (Some(head), tokio::time::Instant::now());
            } else {
                logged_head = Some(head);
            }
        }
    }
    if let Some(head) = logged_head {
        publish_head(&head);
    }
}

/// The head, in the log: what an operator keeps outside the database (docs/security.md) to
/// find entries cut off the end with `penwarden audit verify --head`.
fn publish_head(head: &ChainHead) {
    tracing::info!(head = %head, "audit chain head");
}

/// One API call on its way to the audit trail: who, what and when, known at its start.
pub(crate) struct Call {
    entry: AuditCall,
    /// The caller's scope, or why the call is refused before it starts.
    scope: Result<Scope, Status>,
}

impl Call {
    /// The caller's scope, or the authentication failure (recorded as the call's status).
    pub(crate) fn scope(&self) -> Result<Scope, Status> {
        self.scope.clone()
    }

    /// The call's entry with its outcome; `records` counts what a successful answer returned.
    /// (Not async: the result, a stream perhaps, need not be held across an await.)
    pub(crate) fn outcome<T>(
        mut self,
        result: &Result<Response<T>, Status>,
        records: impl FnOnce(&T) -> usize,
    ) -> AuditCall {
        match result {
            Ok(response) => {
                self.entry.status = "OK".into();
                self.entry.records = records(response.get_ref()) as i64;
            }
            Err(status) => self.entry.status = code_name(status.code()).into(),
        }
        self.entry
    }
}

impl Authenticator {
    /// Authenticates a call and starts its audit entry: the key id (never the secret), role and
    /// scope, the method, and the request's fields as JSON.
    pub(crate) async fn begin<T: serde::Serialize>(&self, request: &Request<T>, method: &str) -> Call {
        let scope = self.scope(request).await;
        let (role, scope_id) = match &scope {
            Ok(scope) => (scope.role().as_str().to_owned(), scope.id().to_owned()),
            Err(_) => (String::new(), String::new()),
        };
        let entry = AuditCall {
            time_ms: crate::now_ms(),
            key_id: crate::auth::key_id(request).unwrap_or_default(),
            role,
            scope: scope_id,
            method: format!("penwarden.api.v1.{method}"),
            request: serde_json::to_string(request.get_ref()).unwrap_or_default(),
            status: String::new(),
            records: 0,
        };
        Call { entry, scope }
    }
}

/// Runs an RPC's body with its caller's scope and records the call with its outcome.
///
/// `audited!(self, request, "FleetService/RecallLot", |response| count, |scope| { body })`:
/// the body returns the RPC's result and may use `?`.
macro_rules! audited {
    ($api:ident, $request:ident, $method:literal, $records:expr, |$scope:ident| $body:block) => {{
        let call = $api.auth.begin(&$request, $method).await;
        let caller = call.scope();
        let result = async move {
            let $scope = caller?;
            $body
        }
        .await;
        let entry = call.outcome(&result, $records);
        $api.audit.record(entry).await;
        result
    }};
}
pub(crate) use audited;

/// A status code's name, as grpc-status documents it.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

pub struct AuditApi {
    store: Store,
    auth: Arc<Authenticator>,
    audit: Auditor,
}

impl AuditApi {
    pub(crate) fn new(store: Store, auth: Arc<Authenticator>, audit: Auditor) -> Self {
        AuditApi { store, auth, audit }
    }
}

#[tonic::async_trait]
impl AuditService for AuditApi {
    async fn list_audit_events(
        &self,
        request: Request<pb::ListAuditEventsRequest>,
    ) -> Result<Response<pb::ListAuditEventsResponse>, Status> {
        audited!(
            self,
            request,
            "AuditService/ListAuditEvents",
            |r: &pb::ListAuditEventsResponse| r.events.len(),
            |scope| {
                require_admin(&scope, "ListAuditEvents")?;
                let request = request.into_inner();
                let page_size = match request.page_size {
                    0 => 100,
                    size @ 1..=1000 => size,
                    _ => return Err(invalid_argument("page_size must be 1 to 1000")),
                };
                let entries =
                    self.store.audit_entries(request.after_seq.max(0), page_size).await.map_err(from_store)?;
                let next_after_seq = match entries.last() {
                    Some(last) if entries.len() == page_size as usize => last.record.seq,
                    _ => 0,
                };
                let events = entries
                    .into_iter()
                    .map(|entry| pb::AuditEvent {
                        seq: entry.record.seq,
                        time_unix_ms: entry.record.call.time_ms,
                        key_id: entry.record.call.key_id,
                        role: entry.record.call.role,
                        scope: entry.record.call.scope,
                        method: entry.record.call.method,
                        request_json: entry.record.call.request,
                        status: entry.record.call.status,
                        records: entry.record.call.records,
                        previous_hash: entry.previous_hash,
                        hash: entry.hash,
                    })
                    .collect();
                Ok(Response::new(pb::ListAuditEventsResponse { events, next_after_seq }))
            }
        )
    }
}
