//! The API's hottest reads on SQLite (GetCartridge, ListViolations), through rusqlite on
//! tokio's blocking threads.
//!
//! sqlx runs each SQLite connection on a worker thread of its own and sends every row of a
//! result back through a channel: for a page of 100 violations, a hundred messages and the
//! wake-ups between threads that go with them, which the profile found to be a third of the
//! API's CPU (docs/performance.md, "Target 4"). Here one query is one hand-off: the blocking
//! thread prepares the statement (cached per connection), steps through the rows, turns them
//! into the store's types and returns them all at once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use deadpool::managed::{self, Metrics, Pool, RecycleError, RecycleResult};
use deadpool::Runtime;
use deadpool_sync::{InteractError, SyncWrapper};
use rusqlite::types::{FromSql, ToSqlOutput, ValueRef};
use rusqlite::{OpenFlags, ToSql};

use crate::backend::{Column, FromStoreRow};
use crate::statement::{Statement, Value};
use crate::Result;

/// Read connections to one SQLite database, as many as sqlx's read pool holds.
const CONNECTIONS: usize = 4;
/// Distinct statement texts each connection keeps prepared: every combination of filters the
/// two reads build, with room to spare (rusqlite's default is 16).
const PREPARED_STATEMENTS: usize = 64;

#[derive(Clone)]
pub(crate) struct DirectReader {
    pool: Pool<Connections>,
}

impl std::fmt::Debug for DirectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectReader").field("status", &self.pool.status()).finish()
    }
}

impl DirectReader {
    /// Read connections to the database at `path`, opened as they are first needed. The file
    /// must exist: the writer creates it and applies the migrations first.
    pub(crate) fn new(path: &Path) -> DirectReader {
        let pool = Pool::builder(Connections { path: path.to_owned() })
            .max_size(CONNECTIONS)
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(Duration::from_secs(30)))
            .create_timeout(Some(Duration::from_secs(10)))
            .build()
            .expect("a pool with a runtime and a size builds");
        DirectReader { pool }
    }

    /// The rows `statement` selects, each read as a `T`.
    pub(crate) async fn fetch_all<T: FromStoreRow + Send + 'static>(&self, statement: Statement) -> Result<Vec<T>> {
        let connection = self.pool.get().await?;
        let (text, values) = statement.into_sqlite();
        let rows = connection
            .interact(move |connection| -> rusqlite::Result<Vec<T>> {
                let mut prepared = connection.prepare_cached(&text)?;
                let mut rows = prepared.query(rusqlite::params_from_iter(values.iter()))?;
                let mut read = Vec::new();
                while let Some(row) = rows.next()? {
                    read.push(T::from_row(row));
                }
                Ok(read)
            })
            .await;
        match rows {
            Ok(rows) => Ok(rows?),
            // A row the code cannot read as the schema says is a bug, and panics as sqlx's
            // `Row::get` does; the connection's lock is poisoned and the pool drops it.
            Err(InteractError::Panic(panic)) => std::panic::resume_unwind(panic),
            Err(InteractError::Aborted) => Err(crate::Error::DirectPool("the read was aborted".into())),
        }
    }

    pub(crate) fn close(&self) {
        self.pool.close();
    }
}

/// Opens read connections; a connection is reused as it is (no query to check it: it lives in
/// this process, and a failed one fails its read, which the caller sees).
struct Connections {
    path: PathBuf,
}

impl managed::Manager for Connections {
    type Type = SyncWrapper<rusqlite::Connection>;
    type Error = rusqlite::Error;

    async fn create(&self) -> Result<Self::Type, Self::Error> {
        let path = self.path.clone();
        SyncWrapper::new(Runtime::Tokio1, move || {
            let connection = rusqlite::Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )?;
            // These connections only read; a statement that would write fails instead.
            connection.pragma_update(None, "query_only", true)?;
            connection.pragma_update(None, "temp_store", "memory")?;
            connection.busy_timeout(Duration::from_secs(10))?;
            connection.set_prepared_statement_cache_capacity(PREPARED_STATEMENTS);
            Ok(connection)
        })
        .await
    }

    async fn recycle(&self, connection: &mut Self::Type, _: &Metrics) -> RecycleResult<Self::Error> {
        if connection.is_mutex_poisoned() {
            return Err(RecycleError::message("a read panicked while it held the connection"));
        }
        Ok(())
    }
}

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Int(value) => ToSqlOutput::Borrowed(ValueRef::Integer(*value)),
            Value::Text(value) => ToSqlOutput::Borrowed(ValueRef::Text(value.as_bytes())),
        })
    }
}

impl<T: FromSql> Column<T> for rusqlite::Row<'_> {
    fn column(&self, index: usize) -> T {
        self.get(index).unwrap_or_else(|error| panic!("column {index}: {error}"))
    }
}

/// True when the failure is the database's or its disk's (busy, locked, I/O, full), not the
/// statement's.
pub(crate) fn is_transient(error: &rusqlite::Error) -> bool {
    match error {
        rusqlite::Error::SqliteFailure(failure, _) => crate::backend::sqlite_code_is_transient(failure.extended_code),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::StoreRow;
    use crate::statement::SqlBuilder as _;

    #[derive(Debug, PartialEq)]
    struct Pair(i64, Option<String>);

    impl FromStoreRow for Pair {
        fn from_row(row: &impl StoreRow) -> Self {
            Pair(row.column(0), row.column(1))
        }
    }

    async fn database() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("record.db");
        // The writer creates the file and its schema; the direct path only reads it.
        crate::Store::connect(&format!("sqlite:{}", path.display())).await.unwrap().close().await;
        (dir, path)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_rows_with_their_bound_values() {
        let (_dir, path) = database().await;
        let reader = DirectReader::new(&path);
        let mut statement = Statement::new("SELECT ");
        statement.push_int(7).push_sql(", ").push_text("x").push_sql(" UNION ALL SELECT 8, NULL ORDER BY 1");
        let rows: Vec<Pair> = reader.fetch_all(statement).await.unwrap();
        assert_eq!(rows, vec![Pair(7, Some("x".into())), Pair(8, None)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn refuses_to_write_and_a_bad_statement_is_a_permanent_error() {
        let (_dir, path) = database().await;
        let reader = DirectReader::new(&path);
        let write = Statement::new("DELETE FROM chains RETURNING 1, NULL");
        let error = reader.fetch_all::<Pair>(write).await.unwrap_err();
        assert!(error.to_string().contains("readonly"), "{error}");
        let error = reader.fetch_all::<Pair>(Statement::new("SELECT 1, NULL FROM no_such_table")).await.unwrap_err();
        assert!(!error.is_transient(), "{error}");
        assert!(error.to_string().contains("no such table"), "{error}");
    }

    #[test]
    fn busy_and_disk_failures_are_transient() {
        let busy = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY), None);
        assert!(is_transient(&busy));
        let full = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
        assert!(is_transient(&full));
        let constraint =
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE), None);
        assert!(!is_transient(&constraint));
    }
}
