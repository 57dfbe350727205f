//! The compliance record, in SQL through sqlx, on SQLite (embedded, one box) or PostgreSQL
//! (shared by several instances), chosen by the store URL.
//!
//! The store applies ingest batches in one transaction each, asks the pure compliance engine
//! for judgements, and records violations (raised or retracted, never deleted). What a batch or
//! a recall does to the record is written once (`record`), over a trait (`RecordTx`) that each
//! backend implements (`record_sql`). SQL that both dialects read alike is written once and
//! compiled for each backend's driver (`backend::reading!`, `record_sql`); where the dialects
//! differ, each says it its own way (`backend::Dialect`).

mod apikeys;
mod audit;
mod backend;
mod batch;
mod direct;
mod directory;
mod fleet;
mod queries;
mod record;
mod record_sql;
mod reports;
mod scope;
pub mod scratch;
mod seq_runs;
mod statement;

pub use apikeys::ApiKeyRow;
pub use backend::{redact_url, BackendKind};
pub use batch::{
    Effects, EndedSession, IngestBatch, OutboxRow, PenStateUpdate, PenTelemetry, QuarantineEntry, RaisedViolation,
    StatusReport, TelemetryMessage,
};
pub use directory::{PenDirectory, PenPlacement};
pub use fleet::{ChainRow, ClinicRow, LotRow, PenRow};
pub use queries::{
    CartridgeView, PenSterilityView, QuarantineFilter, QuarantineRow, ReplaySelection, Replayable, SessionView,
    ViolationFilter, ViolationRow,
};
pub use reports::{ComplianceReportView, LotClinicUse, LotTrace, ReportFilter};

use backend::Backend;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unsupported database URL {0:?}: expected sqlite:PATH or postgres://HOST/DATABASE")]
    UnsupportedUrl(String),
    /// `url` is redacted: a password in it is never shown.
    #[error("cannot open database {url}: {source}")]
    Open { url: String, source: sqlx::Error },
    #[error("cannot apply migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0} not found")]
    NotFound(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A read on SQLite's direct path (`direct`) failed in SQLite.
    #[error("database error: {0}")]
    Direct(#[from] rusqlite::Error),
    /// No connection of the direct path could be had (timed out, closed, could not open).
    #[error("database unavailable: {0}")]
    DirectPool(String),
}

impl From<deadpool::managed::PoolError<rusqlite::Error>> for Error {
    fn from(error: deadpool::managed::PoolError<rusqlite::Error>) -> Self {
        match error {
            deadpool::managed::PoolError::Backend(error) => Error::Direct(error),
            other => Error::DirectPool(other.to_string()),
        }
    }
}

impl Error {
    /// True when the database itself is failing (busy, locked, full disk, I/O, connection
    /// lost, a transaction chosen as a deadlock victim), so retrying later may help. Anything
    /// else (a constraint, a type, a statement the data makes fail) fails the same way every
    /// time: ingest then finds the message that causes it and quarantines it instead of
    /// retrying for ever.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(error) => backend::is_transient(error),
            Error::Direct(error) => direct::is_transient(error),
            Error::DirectPool(_) => true,
            _ => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    backend: Backend,
    directory: PenDirectory,
    thresholds: std::sync::Arc<penwarden_domain::compliance::Thresholds>,
    /// Bumped after every commit that raised or retracted a violation, so watchers wake at
    /// once instead of polling.
    violation_changes: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Store {
    /// Opens the database the URL names (`sqlite:PATH`, created if missing; or
    /// `postgres://…`, which must exist), applies migrations and loads the pen directory.
    pub async fn connect(url: &str) -> Result<Store> {
        let backend = Backend::connect(url).await?;
        let directory = PenDirectory::default();
        let violation_changes = std::sync::Arc::new(tokio::sync::watch::Sender::new(0));
        let store = Store { backend, directory, thresholds: Default::default(), violation_changes };
        store.reload_directory().await?;
        Ok(store)
    }

    /// Which database holds the record.
    pub fn backend_kind(&self) -> BackendKind {
        self.backend.kind()
    }

    /// The thresholds the session rules judge with (defaults until set).
    pub fn with_thresholds(mut self, thresholds: penwarden_domain::compliance::Thresholds) -> Store {
        self.thresholds = std::sync::Arc::new(thresholds);
        self
    }

    /// The thresholds the session rules judge with.
    pub fn thresholds(&self) -> &penwarden_domain::compliance::Thresholds {
        &self.thresholds
    }

    /// The in-memory view of registered pens that ingest consults for every message.
    pub fn directory(&self) -> &PenDirectory {
        &self.directory
    }

    /// Wakes when this process records a violation change (other processes sharing the
    /// database are not seen: watchers poll as well).
    pub fn subscribe_violation_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.violation_changes.subscribe()
    }

    pub(crate) fn announce_changes(&self, effects: &Effects) {
        if !effects.raised.is_empty() || !effects.retracted.is_empty() {
            self.violation_changes.send_modify(|count| *count += 1);
        }
    }

    pub async fn close(&self) {
        self.backend.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{reading, writing};

    #[tokio::test]
    async fn failures_of_the_data_are_permanent_failures_of_the_database_transient() {
        let (store, _scratch) = test_support::temp_store().await;
        let constraint = writing!(store, pool => {
            sqlx::query("INSERT INTO chains (chain_id, name, created_ms) VALUES ('c', NULL, 1)").execute(pool).await.map(|_| ())
        })
        .unwrap_err();
        assert!(!Error::from(constraint).is_transient());
        let syntax =
            reading!(store, pool => sqlx::query("SELECT FROM nowhere").execute(pool).await.map(|_| ())).unwrap_err();
        assert!(!Error::from(syntax).is_transient());
        assert!(!Error::NotFound("pen P1".into()).is_transient());
        store.close().await;
        let closed = reading!(store, pool => sqlx::query("SELECT 1").execute(pool).await.map(|_| ())).unwrap_err();
        assert!(Error::from(closed).is_transient());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn a_sqlite_database_is_readable_by_its_owner_only_whether_new_or_not() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let scratch = scratch::ScratchStore::sqlite();
        let store = Store::connect(scratch.url()).await.unwrap();
        store.register_chain(&penwarden_domain::ChainId::parse("c1").unwrap(), "C", 1).await.unwrap();
        let dir = scratch.directory().unwrap();
        let database = dir.join("record.db");
        for file in ["record.db", "record.db-wal", "record.db-shm"] {
            assert_eq!(mode(&dir.join(file)), 0o600, "{file}");
        }
        store.close().await;
        std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = Store::connect(scratch.url()).await.unwrap();
        assert_eq!(mode(&database), 0o600);
        store.close().await;
    }

    #[tokio::test]
    async fn a_store_url_of_another_kind_is_refused_without_showing_its_password() {
        let Err(error) = Store::connect("mysql://pw:s3cret@db/x").await else { panic!("mysql accepted") };
        let message = error.to_string();
        assert!(message.contains("pw:***@db") && !message.contains("s3cret"), "{message}");
        let Err(error) = Store::connect("postgres://pw:s3cret@127.0.0.1:1/x").await else { panic!("port 1 reached") };
        let message = error.to_string();
        assert!(message.contains("pw:***@127.0.0.1:1") && !message.contains("s3cret"), "{message}");
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::Store;
    use crate::scratch::ScratchStore;

    /// An empty store of the backend the test run is for (`scratch::BACKEND_VARIABLE`).
    pub(crate) async fn temp_store() -> (Store, ScratchStore) {
        let scratch = ScratchStore::new().await;
        (Store::connect(scratch.url()).await.unwrap(), scratch)
    }
}
