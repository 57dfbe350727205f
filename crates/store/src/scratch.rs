//! Empty stores for tests and benchmarks, removed when dropped: a SQLite file in a temporary
//! directory, or a database with a random name created on a PostgreSQL server and dropped
//! after. `PENWARDEN_TEST_STORE` chooses for every test that asks for "the" backend, so one
//! suite runs against either: unset or `sqlite` for SQLite; `postgres` for the server at
//! 127.0.0.1:5432 (user postgres); or the `postgres://` URL of a database whose user may
//! create databases.

use std::sync::atomic::{AtomicU64, Ordering};

use sqlx::Connection;

use crate::BackendKind;

/// The variable that chooses the backend of the shared test suites.
pub const BACKEND_VARIABLE: &str = "PENWARDEN_TEST_STORE";
const DEFAULT_POSTGRES: &str = "postgres://postgres@127.0.0.1:5432/postgres";

pub struct ScratchStore {
    url: String,
    kind: BackendKind,
    directory: Option<tempfile::TempDir>,
    /// The server's maintenance URL and the database to drop.
    postgres: Option<(String, String)>,
}

impl ScratchStore {
    /// A store of the backend `PENWARDEN_TEST_STORE` names.
    pub async fn new() -> ScratchStore {
        match std::env::var(BACKEND_VARIABLE).ok().as_deref() {
            None | Some("") | Some("sqlite") => ScratchStore::sqlite(),
            Some("postgres") => ScratchStore::postgres(DEFAULT_POSTGRES).await,
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                ScratchStore::postgres(url).await
            }
            Some(other) => panic!("{BACKEND_VARIABLE}={other:?}: expected sqlite, postgres or a postgres:// URL"),
        }
    }

    /// The backend `PENWARDEN_TEST_STORE` names.
    pub fn chosen_kind() -> BackendKind {
        match std::env::var(BACKEND_VARIABLE).ok().as_deref() {
            None | Some("") | Some("sqlite") => BackendKind::Sqlite,
            Some(_) => BackendKind::Postgres,
        }
    }

    pub fn sqlite() -> ScratchStore {
        let directory = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite:{}", directory.path().join("record.db").display());
        ScratchStore { url, kind: BackendKind::Sqlite, directory: Some(directory), postgres: None }
    }

    /// A new, empty database on the server `maintenance_url` reaches.
    pub async fn postgres(maintenance_url: &str) -> ScratchStore {
        static CREATED: AtomicU64 = AtomicU64::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let name = format!(
            "penwarden_test_{}_{}_{}",
            std::process::id(),
            CREATED.fetch_add(1, Ordering::Relaxed),
            nanos % 1_000_000_000
        );
        let mut admin = sqlx::PgConnection::connect(maintenance_url)
            .await
            .unwrap_or_else(|error| panic!("cannot reach PostgreSQL for a scratch database: {error}"));
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut admin).await.expect("create a scratch database");
        let _ = admin.close().await;
        let url = database_url(maintenance_url, &name);
        ScratchStore {
            url,
            kind: BackendKind::Postgres,
            directory: None,
            postgres: Some((maintenance_url.to_owned(), name)),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The temporary directory a SQLite store lives in.
    pub fn directory(&self) -> Option<&std::path::Path> {
        self.directory.as_ref().map(tempfile::TempDir::path)
    }
}

/// `url` with its database name replaced.
fn database_url(url: &str, database: &str) -> String {
    let (scheme, rest) = url.split_once("://").expect("a postgres:// URL");
    let (location, query) = match rest.split_once('?') {
        Some((location, query)) => (location, format!("?{query}")),
        None => (rest, String::new()),
    };
    let host = location.split_once('/').map_or(location, |(host, _)| host);
    format!("{scheme}://{host}/{database}{query}")
}

impl Drop for ScratchStore {
    fn drop(&mut self) {
        let Some((maintenance_url, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own
        // with a runtime of its own drops the database (FORCE ends the store's connections).
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let mut admin = sqlx::PgConnection::connect(&maintenance_url).await.ok()?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut admin).await.ok()?;
                admin.close().await.ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("scratch database left behind on the test server (drop it by hand)");
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_scratch_database_keeps_the_server_and_its_options() {
        assert_eq!(
            super::database_url("postgres://postgres@127.0.0.1:5432/postgres", "t1"),
            "postgres://postgres@127.0.0.1:5432/t1"
        );
        assert_eq!(super::database_url("postgres://u@h/db?sslmode=disable", "t2"), "postgres://u@h/t2?sslmode=disable");
        assert_eq!(super::database_url("postgres://u@h", "t3"), "postgres://u@h/t3");
    }
}
