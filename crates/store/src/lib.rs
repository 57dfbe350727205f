//! The compliance record, in SQL through sqlx.
//!
//! SQLite (embedded, WAL) is the default; the SQL is kept portable for PostgreSQL. The store
//! applies ingest batches in one transaction each, asks the pure compliance engine for
//! judgements, and records violations (raised or retracted, never deleted).

mod apikeys;
mod batch;
mod directory;
mod fleet;
mod queries;
mod reports;
mod scope;
mod seq_runs;
mod session_rules;

pub use apikeys::ApiKeyRow;
pub use batch::{
    Effects, EndedSession, IngestBatch, OutboxRow, PenStateUpdate, PenTelemetry, QuarantineEntry, RaisedViolation,
    StatusReport,
};
pub use directory::{PenDirectory, PenPlacement};
pub use fleet::{ChainRow, ClinicRow, LotRow, PenRow};
pub use queries::{
    CartridgeView, PenSterilityView, QuarantineFilter, QuarantineRow, SessionView, ViolationFilter, ViolationRow,
};
pub use reports::{ComplianceReportView, LotClinicUse, LotTrace, ReportFilter};

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unsupported database URL {0:?}: expected sqlite:PATH")]
    UnsupportedUrl(String),
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
}

impl Error {
    /// True when the database itself is failing (full disk, I/O), so retrying later may help.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Database(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct Store {
    /// For reads: WAL lets them run beside the writer.
    pool: SqlitePool,
    /// The one connection that writes. SQLite has one writer at a time anyway; one connection
    /// means no SQLITE_BUSY between our own writers, and a transaction a failed commit leaves
    /// behind (disk full) is rolled back on that same connection before anything else runs.
    writer: SqlitePool,
    directory: PenDirectory,
    thresholds: std::sync::Arc<penwarden_domain::compliance::Thresholds>,
    /// Bumped after every commit that raised or retracted a violation, so watchers wake at
    /// once instead of polling.
    violation_changes: std::sync::Arc<tokio::sync::watch::Sender<u64>>,
}

impl Store {
    /// Opens (creating if missing) the database, applies migrations and loads the pen directory.
    pub async fn connect(url: &str) -> Result<Store> {
        if !url.starts_with("sqlite:") {
            return Err(Error::UnsupportedUrl(url.to_owned()));
        }
        let open_error = |source| Error::Open { url: url.to_owned(), source };
        let options = SqliteConnectOptions::from_str(url)
            .map_err(open_error)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a committed batch survives power loss, not only a process crash; batching
            // keeps the cost to one fsync per batch.
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            // Statement journals (a multi-row INSERT inside the batch transaction needs one)
            // stay in memory instead of a temporary file written through the kernel.
            .pragma("temp_store", "memory")
            .busy_timeout(Duration::from_secs(10));
        let writer =
            SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await.map_err(open_error)?;
        sqlx::migrate!("./migrations").run(&writer).await?;
        // No ping before each query: the connections live in this process (the ping is a
        // round trip to the connection's worker thread, as costly as a small query).
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(open_error)?;
        let directory = PenDirectory::default();
        let violation_changes = std::sync::Arc::new(tokio::sync::watch::Sender::new(0));
        let store = Store { pool, writer, directory, thresholds: Default::default(), violation_changes };
        store.reload_directory().await?;
        Ok(store)
    }

    /// The thresholds the session rules judge with (defaults until set).
    pub fn with_thresholds(mut self, thresholds: penwarden_domain::compliance::Thresholds) -> Store {
        self.thresholds = std::sync::Arc::new(thresholds);
        self
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
        self.pool.close().await;
        self.writer.close().await;
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::Store;

    pub(crate) async fn temp_store() -> (Store, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite:{}", dir.path().join("test.db").display());
        (Store::connect(&url).await.unwrap(), dir)
    }
}
