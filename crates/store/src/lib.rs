//! The compliance record, in SQL through sqlx.
//!
//! The store applies ingest batches in one transaction each, asks the pure compliance engine
//! for judgements, and records violations (raised or retracted, never deleted). What a batch or
//! a recall does to the record is written once (`record`), over a trait (`RecordTx`) that a
//! backend implements with its own SQL; SQLite (embedded, WAL; `sqlite_record`) is the one
//! built so far.

mod apikeys;
mod audit;
mod batch;
mod directory;
mod fleet;
mod queries;
mod record;
mod reports;
mod scope;
mod seq_runs;
mod sqlite_record;

pub use apikeys::ApiKeyRow;
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
    /// True when the database itself is failing (busy, locked, full disk, I/O, connection
    /// lost), so retrying later may help. Anything else (a constraint, a type, a statement the
    /// data makes fail) fails the same way every time: ingest then finds the message that
    /// causes it and quarantines it instead of retrying for ever.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Database(error) => is_transient(error),
            _ => false,
        }
    }
}

fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(database) => {
            // SQLite's primary result code is the low byte of the extended one.
            let primary = database.code().and_then(|code| code.parse::<i32>().ok()).map(|code| code & 0xff);
            matches!(
                primary,
                Some(
                    SQLITE_BUSY
                        | SQLITE_LOCKED
                        | SQLITE_NOMEM
                        | SQLITE_READONLY
                        | SQLITE_IOERR
                        | SQLITE_CORRUPT
                        | SQLITE_FULL
                        | SQLITE_CANTOPEN
                        | SQLITE_PROTOCOL
                        | SQLITE_NOTADB
                )
            )
        }
        _ => false,
    }
}

// SQLite's primary result codes (https://www.sqlite.org/rescode.html) that say the database
// or its disk is failing, not the data. READONLY, CORRUPT and NOTADB are not passing states,
// but quarantining every message because of them would be worse than waiting for an operator.
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;
const SQLITE_NOMEM: i32 = 7;
const SQLITE_READONLY: i32 = 8;
const SQLITE_IOERR: i32 = 10;
const SQLITE_CORRUPT: i32 = 11;
const SQLITE_FULL: i32 = 13;
const SQLITE_CANTOPEN: i32 = 14;
const SQLITE_PROTOCOL: i32 = 15;
const SQLITE_NOTADB: i32 = 26;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How write transactions begin: with the write lock. A deferred BEGIN reads first and
/// upgrades at its first write, which fails at once (SQLITE_BUSY, no waiting) when another
/// process sharing the file committed in between; taking the lock first makes a second
/// instance on the same file wait its turn (busy_timeout) instead.
pub(crate) const WRITE_TRANSACTION: &str = "BEGIN IMMEDIATE";

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

/// The store holds API key digests and the whole compliance record: only its owner may read
/// it. Creates the database file 0600 if it is missing (SQLite gives its WAL and shared-memory
/// files the database file's mode) and narrows an existing one, and its companions, to 0600.
fn make_private(database: &std::path::Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if database.as_os_str().is_empty() || database == std::path::Path::new(":memory:") {
            return Ok(());
        }
        if !database.exists() {
            std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(database)?;
        }
        let mut companions = vec![database.to_path_buf()];
        for suffix in ["-wal", "-shm"] {
            let mut name = database.as_os_str().to_owned();
            name.push(suffix);
            companions.push(name.into());
        }
        for file in companions.iter().filter(|file| file.exists()) {
            std::fs::set_permissions(file, std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
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
        make_private(options.get_filename())
            .map_err(|source| Error::Open { url: url.to_owned(), source: source.into() })?;
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
mod tests {
    use super::*;

    #[tokio::test]
    async fn failures_of_the_data_are_permanent_failures_of_the_database_transient() {
        let (store, _dir) = test_support::temp_store().await;
        let constraint = sqlx::query("INSERT INTO chains (chain_id, name, created_ms) VALUES ('c', NULL, 1)")
            .execute(&store.writer)
            .await
            .unwrap_err();
        assert!(!Error::from(constraint).is_transient());
        let syntax = sqlx::query("SELECT FROM nowhere").execute(&store.pool).await.unwrap_err();
        assert!(!Error::from(syntax).is_transient());
        assert!(!Error::NotFound("pen P1".into()).is_transient());
        store.close().await;
        let closed = sqlx::query("SELECT 1").execute(&store.pool).await.unwrap_err();
        assert!(Error::from(closed).is_transient());
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn the_database_is_readable_by_its_owner_only_whether_new_or_not() {
        use std::os::unix::fs::PermissionsExt;
        let mode = |path: &std::path::Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let (store, dir) = test_support::temp_store().await;
        store.register_chain(&penwarden_domain::ChainId::parse("c1").unwrap(), "C", 1).await.unwrap();
        let database = dir.path().join("test.db");
        for file in ["test.db", "test.db-wal", "test.db-shm"] {
            assert_eq!(mode(&dir.path().join(file)), 0o600, "{file}");
        }
        store.close().await;
        std::fs::set_permissions(&database, std::fs::Permissions::from_mode(0o644)).unwrap();
        let store = Store::connect(&format!("sqlite:{}", database.display())).await.unwrap();
        assert_eq!(mode(&database), 0o600);
        store.close().await;
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
