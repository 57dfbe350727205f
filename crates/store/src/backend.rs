//! The two databases the record can live in, and what differs between them: how to open one,
//! how its errors read, how a write transaction begins, and the few SQL forms the dialects
//! spell differently. Everything else is written once (see `reading!` and `writing!`).

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgDatabaseError, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::direct::DirectReader;
use crate::statement::Statement;
use crate::{Error, Result};

/// Which database holds the record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub(crate) enum Backend {
    Sqlite {
        /// For reads: WAL lets them run beside the writer.
        reader: SqlitePool,
        /// The one connection that writes. SQLite has one writer at a time anyway; one
        /// connection means no SQLITE_BUSY between our own writers, and a transaction a failed
        /// commit leaves behind (disk full) is rolled back on that same connection before
        /// anything else runs.
        writer: SqlitePool,
        /// For the API's hottest reads (`hot_read`): one thread hand-off per query.
        direct: DirectReader,
    },
    /// Reads and writes share the pool: PostgreSQL runs them side by side, and write
    /// transactions that judge take the record lock (`RECORD_LOCK`) first.
    Postgres(PgPool),
}

/// Runs `$body` with `$pool` bound to the pool reads use, a `&SqlitePool` or a `&PgPool`: the
/// body is compiled once per backend, so SQL that both dialects read alike is written once.
/// Placeholders are `$1, $2, …` (sqlx's SQLite driver takes them too).
macro_rules! reading {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            $crate::backend::Backend::Sqlite { reader: $pool, .. } => $body,
            $crate::backend::Backend::Postgres($pool) => $body,
        }
    };
}

/// As `reading!`, with the pool writes use.
macro_rules! writing {
    ($store:expr, $pool:ident => $body:expr) => {
        match &$store.backend {
            $crate::backend::Backend::Sqlite { writer: $pool, .. } => $body,
            $crate::backend::Backend::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` inside a write transaction, with `$connection` bound to its connection (a
/// `&mut SqliteConnection` or a `&mut PgConnection`), and commits it; evaluates to
/// `Result<value of $body>`. On SQLite the transaction takes the database's write lock first
/// (`BEGIN IMMEDIATE`): there is one writer at a time by nature. On PostgreSQL it takes the
/// advisory lock `$lock` first, so the transactions of every instance sharing the database
/// that hold it run one after the other, each seeing everything the ones before it committed.
macro_rules! in_write_transaction {
    ($store:expr, $lock:expr, $connection:ident => $body:expr) => {
        match &$store.backend {
            $crate::backend::Backend::Sqlite { writer, .. } => {
                let mut pooled = writer.acquire().await?;
                let result: $crate::Result<_> = async {
                    let mut tx =
                        sqlx::Connection::begin_with(&mut *pooled, $crate::backend::SQLITE_WRITE_TRANSACTION).await?;
                    let $connection = &mut *tx;
                    let value = $body;
                    tx.commit().await?;
                    Ok(value)
                }
                .await;
                if result.is_err() {
                    // After SQLITE_FULL or an I/O error SQLite may already have rolled the
                    // transaction back, and sqlx's idea of the connection's transaction depth
                    // can then be wrong (the next BEGIN would become a SAVEPOINT that never
                    // commits). The connection is in doubt: close it, the pool opens a new one.
                    let _ = sqlx::Connection::close(pooled.detach()).await;
                }
                result
            }
            $crate::backend::Backend::Postgres(pool) => {
                let mut tx = pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind($lock).execute(&mut *tx).await?;
                let $connection = &mut *tx;
                let value = $body;
                tx.commit().await?;
                $crate::Result::Ok(value)
            }
        }
    };
}

/// Runs `$body` inside a write transaction that may judge, with `$record` bound to the
/// backend's `RecordTx`. On PostgreSQL it holds the record lock: a rule never misses a fact
/// another instance was recording at the same moment (two sessions of one cartridge, say),
/// and violation change numbers are handed out in commit order, so a watcher resuming from a
/// change number misses nothing.
macro_rules! in_record_transaction {
    ($store:expr, $record:ident => $body:expr) => {
        $crate::backend::in_write_transaction!($store, $crate::backend::RECORD_LOCK, connection => {
            let $record = &mut $crate::record::OpenRecord::record(connection);
            $body
        })
    };
}

pub(crate) use {in_record_transaction, in_write_transaction, reading, writing};

/// A column of a row of either backend, read as `T` (panicking, as `sqlx::Row::get` does,
/// when the schema and the code disagree on its type).
pub(crate) trait Column<T> {
    fn column(&self, index: usize) -> T;
}

impl<T> Column<T> for sqlx::sqlite::SqliteRow
where
    T: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    fn column(&self, index: usize) -> T {
        sqlx::Row::get(self, index)
    }
}

impl<T> Column<T> for sqlx::postgres::PgRow
where
    T: for<'r> sqlx::Decode<'r, sqlx::Postgres> + sqlx::Type<sqlx::Postgres>,
{
    fn column(&self, index: usize) -> T {
        sqlx::Row::get(self, index)
    }
}

/// A row of either backend, for the functions that turn rows into the store's types.
pub(crate) trait StoreRow:
    Column<i64>
    + Column<Option<i64>>
    + Column<String>
    + Column<Option<String>>
    + Column<bool>
    + Column<Option<bool>>
    + Column<f64>
    + Column<Option<f64>>
    + Column<Vec<u8>>
{
}

/// A store type read from one row of either backend (or of the SQLite fast path, `direct`).
pub(crate) trait FromStoreRow: Sized {
    fn from_row(row: &impl StoreRow) -> Self;
}

impl<R> StoreRow for R where
    R: Column<i64>
        + Column<Option<i64>>
        + Column<String>
        + Column<Option<String>>
        + Column<bool>
        + Column<Option<bool>>
        + Column<f64>
        + Column<Option<f64>>
        + Column<Vec<u8>>
{
}

/// How SQLite write transactions begin: with the write lock. A deferred BEGIN reads first and
/// upgrades at its first write, which fails at once (SQLITE_BUSY, no waiting) when another
/// process sharing the file committed in between; taking the lock first makes a second
/// instance on the same file wait its turn (busy_timeout) instead.
pub(crate) const SQLITE_WRITE_TRANSACTION: &str = "BEGIN IMMEDIATE";

/// The PostgreSQL advisory lock that write transactions which judge (ingest batches, recalls)
/// hold until they end: the one writer at a time SQLite has by nature. Reads, and the writes
/// that judge nothing (registrations, quarantine, the outbox), do not take it.
pub(crate) const RECORD_LOCK: i64 = 0x7065_6e77_6172_6401;
/// The advisory lock appends to the audit trail hold, so two instances never chain onto the
/// same entry.
pub(crate) const AUDIT_LOCK: i64 = 0x7065_6e77_6172_6402;

/// The SQL forms the two dialects spell differently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// A `FROM` item reading the rows of a JSON array of arrays bound (as text) at parameter
    /// `$param`, named `alias`, each row in its column `value`: `value ->> 0` is the first
    /// field, as text on PostgreSQL (so numbers are read with `CAST(… AS BIGINT)`, which
    /// SQLite takes too). One statement text for every batch size, and no limit on the number
    /// of bound parameters to chunk around.
    pub(crate) fn json_rows(self, param: u8, alias: &str) -> String {
        match self {
            Dialect::Sqlite => format!("json_each(${param}) AS {alias}"),
            Dialect::Postgres => format!("jsonb_array_elements(CAST(${param} AS jsonb)) AS {alias} (value)"),
        }
    }

    /// Appended to a `SELECT` whose rows the statement will update: rows another transaction
    /// has locked are passed over instead of waited for (PostgreSQL). SQLite has one writer at
    /// a time, so there is nothing to pass over.
    pub(crate) fn skip_locked(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// `texts` joined by commas, as an aggregate.
    pub(crate) fn comma_list(self, texts: &str) -> String {
        match self {
            Dialect::Sqlite => format!("GROUP_CONCAT({texts}, ',')"),
            Dialect::Postgres => format!("string_agg({texts}, ',')"),
        }
    }

    /// A hint naming the index a table is read by, where the planner needs one: SQLite's,
    /// which has no statistics until ANALYZE runs. PostgreSQL plans from statistics.
    pub(crate) fn indexed_by(self, index: &str) -> String {
        match self {
            Dialect::Sqlite => format!(" INDEXED BY {index}"),
            Dialect::Postgres => String::new(),
        }
    }
}

impl Backend {
    pub(crate) async fn connect(url: &str) -> Result<Backend> {
        if url.starts_with("sqlite:") {
            connect_sqlite(url).await
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            connect_postgres(url).await
        } else {
            Err(Error::UnsupportedUrl(redact_url(url)))
        }
    }

    pub(crate) fn kind(&self) -> BackendKind {
        match self {
            Backend::Sqlite { .. } => BackendKind::Sqlite,
            Backend::Postgres(_) => BackendKind::Postgres,
        }
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match self {
            Backend::Sqlite { .. } => Dialect::Sqlite,
            Backend::Postgres(_) => Dialect::Postgres,
        }
    }

    /// The rows a read the API makes most often selects: on SQLite through the direct path,
    /// on PostgreSQL through sqlx (whose driver sends a result in one message per round trip).
    pub(crate) async fn hot_read<T: FromStoreRow + Send + 'static>(&self, statement: Statement) -> Result<Vec<T>> {
        match self {
            Backend::Sqlite { direct, .. } => direct.fetch_all(statement).await,
            Backend::Postgres(pool) => {
                let mut query = statement.into_query_builder::<sqlx::Postgres>();
                Ok(query.build().fetch_all(pool).await?.iter().map(T::from_row).collect())
            }
        }
    }

    pub(crate) async fn close(&self) {
        match self {
            Backend::Sqlite { reader, writer, direct } => {
                direct.close();
                reader.close().await;
                writer.close().await;
            }
            Backend::Postgres(pool) => pool.close().await,
        }
    }
}

async fn connect_sqlite(url: &str) -> Result<Backend> {
    let open_error = |source| Error::Open { url: redact_url(url), source };
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
    make_private(options.get_filename()).map_err(|source| open_error(source.into()))?;
    let writer = SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await.map_err(open_error)?;
    sqlx::migrate!("./migrations/sqlite").run(&writer).await?;
    // No ping before each query: the connections live in this process (the ping is a round
    // trip to the connection's worker thread, as costly as a small query).
    let direct = DirectReader::new(options.get_filename());
    let reader = SqlitePoolOptions::new()
        .max_connections(4)
        .test_before_acquire(false)
        .connect_with(options)
        .await
        .map_err(open_error)?;
    Ok(Backend::Sqlite { reader, writer, direct })
}

async fn connect_postgres(url: &str) -> Result<Backend> {
    let open_error = |source| Error::Open { url: redact_url(url), source };
    // The password comes from the URL, PGPASSWORD or ~/.pgpass (libpq's rules).
    let options = PgConnectOptions::from_str(url).map_err(open_error)?;
    let pool = PgPoolOptions::new()
        .max_connections(8)
        // A connection the server dropped (a restart, a failover) is found before use, not by
        // the batch that would fail on it.
        .test_before_acquire(true)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
        .map_err(open_error)?;
    // sqlx's migrator holds an advisory lock while it runs, so instances starting together
    // apply each migration once.
    sqlx::migrate!("./migrations/postgres").run(&pool).await?;
    Ok(Backend::Postgres(pool))
}

/// The URL with any password in it replaced by `***`, for messages and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let Some((user_info, host)) = authority.rsplit_once('@') else {
        return url.to_owned();
    };
    match user_info.split_once(':') {
        Some((user, _password)) => format!("{scheme}://{user}:***@{host}{path}"),
        None => url.to_owned(),
    }
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

pub(crate) fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(database) => match database.try_downcast_ref::<PgDatabaseError>() {
            Some(postgres) => postgres_error_is_transient(postgres.code()),
            None => database.code().and_then(|code| code.parse::<i32>().ok()).is_some_and(sqlite_code_is_transient),
        },
        _ => false,
    }
}

/// Whether a SQLite result code (primary or extended) says the database or its disk is
/// failing rather than the statement.
pub(crate) fn sqlite_code_is_transient(code: i32) -> bool {
    // The primary result code is the low byte of the extended one.
    matches!(
        code & 0xff,
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
}

/// PostgreSQL SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html) that
/// say the server, its disk or the moment is failing, not the data: connection exceptions
/// (08), a serialization failure or deadlock victim (40001, 40P01), insufficient resources
/// (53: disk full, out of memory, too many connections), the server shutting down or starting
/// (57P01 to 57P03), a lock not available (55P03), system and I/O errors (58), read-only
/// transaction on a standby after a failover (25006).
fn postgres_error_is_transient(sqlstate: &str) -> bool {
    let class = sqlstate.get(..2).unwrap_or("");
    matches!(class, "08" | "53" | "58")
        || matches!(sqlstate, "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "55P03" | "25006")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_in_a_store_url_is_never_shown() {
        assert_eq!(
            redact_url("postgres://pw:s3cret@db.example:5432/penwarden"),
            "postgres://pw:***@db.example:5432/penwarden"
        );
        assert_eq!(redact_url("postgres://pw:a@b@db/x?sslmode=require"), "postgres://pw:***@db/x?sslmode=require");
        assert_eq!(redact_url("postgres://pw@db/penwarden"), "postgres://pw@db/penwarden");
        assert_eq!(redact_url("sqlite:/var/lib/penwarden/record.db"), "sqlite:/var/lib/penwarden/record.db");
    }

    #[test]
    fn postgres_failures_of_the_server_are_transient_and_of_the_data_permanent() {
        for transient in ["08006", "40001", "40P01", "53100", "57P01", "58030", "25006"] {
            assert!(postgres_error_is_transient(transient), "{transient}");
        }
        for permanent in ["23505", "23502", "22P02", "42601", "P0001"] {
            assert!(!postgres_error_is_transient(permanent), "{permanent}");
        }
    }
}
