//! The gRPC API: ComplianceService, FleetService, QuarantineService and AuditService, with
//! standard health checking and server reflection so grpcurl and grpcui work out of the box;
//! and the same services over HTTP with JSON (`http`), when asked for. Every RPC authenticates
//! its API key first and reads the record only within the key's scope.

mod audit;
mod auth;
mod compliance;
mod console;
mod fleet;
mod http;
mod paging;
mod quarantine;
mod status;

use std::net::SocketAddr;

use penwarden_proto::api::v1::audit_service_server::AuditServiceServer;
use penwarden_proto::api::v1::compliance_service_server::ComplianceServiceServer;
use penwarden_proto::api::v1::fleet_service_server::FleetServiceServer;
use penwarden_proto::api::v1::quarantine_service_server::QuarantineServiceServer;
use penwarden_store::Store;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use audit::AuditApi;
pub use auth::RateLimit;
pub use compliance::ComplianceApi;
pub use fleet::{DerivedLines, FleetApi};
pub use quarantine::QuarantineApi;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot listen for gRPC on {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("cannot listen for HTTP on {addr}: {source}")]
    BindHttp { addr: SocketAddr, source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    #[error("gRPC TLS: {0}")]
    Tls(String),
    #[error("reflection setup failed: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// The server side of gRPC over TLS: PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerTlsFiles {
    pub cert_file: std::path::PathBuf,
    pub key_file: std::path::PathBuf,
    /// Mutual TLS: clients must present a certificate these CAs issued.
    pub client_ca_file: Option<std::path::PathBuf>,
}

impl ServerTlsFiles {
    fn config(&self) -> Result<tonic::transport::ServerTlsConfig, Error> {
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| Error::Tls(format!("cannot read {}: {e}", path.display())))
        };
        let identity = tonic::transport::Identity::from_pem(read(&self.cert_file)?, read(&self.key_file)?);
        let mut config = tonic::transport::ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.client_ca_file {
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
        }
        Ok(config)
    }
}

/// A bound gRPC server; `local_addr` tells the port when 0 was asked for.
pub struct Server {
    tls: Option<tonic::transport::ServerTlsConfig>,
    rate_limit: RateLimit,
    listener: TcpListener,
    store: Store,
    derived_lines: DerivedLines,
    replays: Replays,
    /// The JSON API over HTTP (`http`), when asked for.
    http_listener: Option<TcpListener>,
}

/// Where ReplayQuarantine sends the messages it replays: the ingest pipeline.
pub type Replays = tokio::sync::mpsc::Sender<penwarden_store::Replayable>;

impl Server {
    /// `derived_lines` turns changes the API makes to the record (a recall) into time-series
    /// lines for the outbox; `replays` takes quarantined messages an operator replays.
    /// `tls`: serve gRPC over TLS with these files (read and checked here, before binding).
    pub async fn bind(
        addr: SocketAddr,
        tls: Option<&ServerTlsFiles>,
        rate_limit: RateLimit,
        store: Store,
        derived_lines: DerivedLines,
        replays: Replays,
    ) -> Result<Server, Error> {
        let tls = tls.map(ServerTlsFiles::config).transpose()?;
        let listener = TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
        Ok(Server { tls, rate_limit, listener, store, derived_lines, replays, http_listener: None })
    }

    /// Serves the API over HTTP with JSON (crate::http) on `addr` too, beside gRPC.
    pub async fn with_http(mut self, addr: SocketAddr) -> Result<Server, Error> {
        let listener = TcpListener::bind(addr).await.map_err(|source| Error::BindHttp { addr, source })?;
        self.http_listener = Some(listener);
        Ok(self)
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Where the HTTP API listens, if it does.
    pub fn http_addr(&self) -> Option<std::io::Result<SocketAddr>> {
        self.http_listener.as_ref().map(TcpListener::local_addr)
    }

    /// Serves until `shutdown` turns true; in-flight calls finish first.
    pub fn spawn(self, mut shutdown: watch::Receiver<bool>) -> Result<JoinHandle<Result<(), Error>>, Error> {
        let reflection_builder = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(penwarden_proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        // v1 for current grpcurl; v1alpha as well, which older grpcurl and grpcui, and
        // grpcio's reflection client, still ask for.
        let reflection = reflection_builder().build_v1()?;
        let reflection_v1alpha = reflection_builder().build_v1alpha()?;
        let (health_reporter, health_service) = tonic_health::server::health_reporter();
        let auth = std::sync::Arc::new(auth::Authenticator::new(self.store.clone(), self.rate_limit));
        let (auditor, audit_writer) = audit::Auditor::start(self.store.clone());
        // One instance of each service, for gRPC and for the HTTP API alike.
        let services = http::Services {
            compliance: std::sync::Arc::new(ComplianceApi::new(
                self.store.clone(),
                auth.clone(),
                auditor.clone(),
                shutdown.clone(),
            )),
            fleet: std::sync::Arc::new(FleetApi::new(
                self.store.clone(),
                self.derived_lines.clone(),
                auth.clone(),
                auditor.clone(),
            )),
            quarantine: std::sync::Arc::new(QuarantineApi::new(
                self.store.clone(),
                auth.clone(),
                auditor.clone(),
                self.replays,
            )),
            audit: std::sync::Arc::new(audit::AuditApi::new(self.store.clone(), auth, auditor)),
        };
        let compliance = ComplianceServiceServer::from_arc(services.compliance.clone());
        let fleet = FleetServiceServer::from_arc(services.fleet.clone());
        let quarantine = QuarantineServiceServer::from_arc(services.quarantine.clone());
        let audit = AuditServiceServer::from_arc(services.audit.clone());
        let http_server = self.http_listener.map(|listener| {
            let mut shutdown = shutdown.clone();
            tokio::spawn(async move {
                axum::serve(listener, http::router(services))
                    .with_graceful_shutdown(async move {
                        let _ = shutdown.wait_for(|stop| *stop).await;
                    })
                    .await
            })
        });
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(self.listener);
        Ok(tokio::spawn(async move {
            health_reporter.set_serving::<ComplianceServiceServer<ComplianceApi>>().await;
            health_reporter.set_serving::<FleetServiceServer<FleetApi>>().await;
            health_reporter.set_serving::<QuarantineServiceServer<QuarantineApi>>().await;
            health_reporter.set_serving::<AuditServiceServer<audit::AuditApi>>().await;
            let mut builder = tonic::transport::Server::builder();
            if let Some(tls) = self.tls {
                builder = builder.tls_config(tls)?;
            }
            let served = builder
                .add_service(health_service)
                .add_service(reflection)
                .add_service(reflection_v1alpha)
                .add_service(compliance)
                .add_service(fleet)
                .add_service(quarantine)
                .add_service(audit)
                .serve_with_incoming_shutdown(incoming, async move {
                    let _ = shutdown.wait_for(|stop| *stop).await;
                })
                .await;
            // The services, and with them the auditors, are gone (the HTTP server's copies once
            // it has stopped too): the writer appends what is left and ends.
            if let Some(http_server) = http_server {
                let _ = http_server.await;
            }
            let _ = audit_writer.await;
            served?;
            Ok(())
        }))
    }
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}
