//! `penwarden-bench seed`: a store with the volumes of performance target 4 (1M cartridges,
//! 200k sessions, 100k violations over 5 chains, 50 clinics and 2000 pens), written with
//! multi-row inserts straight into the schema the migrations create, on SQLite or PostgreSQL.

use std::time::Instant;

use sqlx::{Connection, PgConnection, QueryBuilder, SqliteConnection};

pub(crate) const CHAINS: usize = 5;
pub(crate) const CLINICS: usize = 50;
pub(crate) const PENS: usize = 2000;
const GTIN: &str = "09506000134352";
// 18 columns at most: 18,000 parameters, under SQLite's 32,766.
const ROWS: usize = 1000;
const T0: i64 = 1_790_000_000_000;

/// Seeds the store `url` names (`sqlite:PATH`, or an empty PostgreSQL database).
pub(crate) async fn seed(url: &str, cartridges: usize, sessions: usize, violations: usize) {
    let started = Instant::now();
    // Creates the file and the schema.
    penwarden_store::Store::connect(url).await.expect("create the store").close().await;
    if url.starts_with("sqlite:") {
        let mut db = SqliteConnection::connect(url).await.expect("open the store");
        sqlx::query("PRAGMA synchronous = OFF").execute(&mut db).await.expect("pragma");
        seed_rows!(db, cartridges, sessions, violations);
    } else {
        let mut db = PgConnection::connect(url).await.expect("open the store");
        seed_rows!(db, cartridges, sessions, violations);
        // PostgreSQL plans from statistics, which autovacuum gathers within a minute or so of
        // a bulk load; gathered now, the benchmark starts on the plans a running store has.
        let mut db = PgConnection::connect(url).await.expect("open the store");
        sqlx::query("ANALYZE").execute(&mut db).await.expect("analyze");
        db.close().await.expect("close");
    }
    eprintln!(
        "seeded {}: {cartridges} cartridges, {sessions} sessions, {violations} violations in {:.1} s",
        penwarden_store::redact_url(url),
        started.elapsed().as_secs_f64()
    );
}

/// The rows, in one transaction on `$db` (a connection of either backend: the body is
/// compiled for each).
macro_rules! seed_rows {
    ($db:ident, $cartridges:expr, $sessions:expr, $violations:expr) => {{
        let (cartridges, sessions, violations): (usize, usize, usize) = ($cartridges, $sessions, $violations);
        let mut tx = $db.begin().await.expect("begin");
        for chain in 0..CHAINS {
            sqlx::query("INSERT INTO chains (chain_id, name, created_ms) VALUES ($1, $2, 0)")
                .bind(format!("chain-{chain}"))
                .bind(format!("Chain {chain}"))
                .execute(&mut *tx)
                .await
                .expect("chain");
        }
        for clinic in 0..CLINICS {
            sqlx::query("INSERT INTO clinics (clinic_id, chain_id, name, created_ms) VALUES ($1, $2, $3, 0)")
                .bind(format!("clinic-{clinic}"))
                .bind(format!("chain-{}", clinic % CHAINS))
                .bind(format!("Clinic {clinic}"))
                .execute(&mut *tx)
                .await
                .expect("clinic");
        }
        insert_rows!(tx, "INSERT INTO pens (pen_serial, clinic_id, model, registered_ms) ", 0..PENS, |mut row, pen| {
            row.push_bind(format!("PW-{pen:06}"))
                .push_bind(format!("clinic-{}", pen % CLINICS))
                .push_bind("SP-2")
                .push_bind(0i64);
        });
        insert_rows!(
            tx,
            "INSERT INTO cartridges (gtin, serial, lot, expiry, first_seen_ms) ",
            0..cartridges,
            |mut row, c| {
                row.push_bind(GTIN)
                    .push_bind(format!("C{c:08}"))
                    .push_bind(format!("LOT{}", c % 100))
                    .push_bind("2030-12-31")
                    .push_bind(T0);
            },
        );
        insert_rows!(
            tx,
            "INSERT INTO sessions (pen_serial, session_id, clinic_id, chain_id, start_seq, started_ms, cartridge_udi,
             cartridge_gtin, cartridge_serial, cartridge_lot, area, depth_setting_mm, end_seq, ended_ms, duration_ms,
             strokes, motor_seconds, max_depth_mm) ",
            0..sessions,
            |mut row, s| {
                let pen = s % PENS;
                let clinic = pen % CLINICS;
                row.push_bind(format!("PW-{pen:06}"))
                    .push_bind(format!("s{s}"))
                    .push_bind(format!("clinic-{clinic}"))
                    .push_bind(format!("chain-{}", clinic % CHAINS))
                    .push_bind((s * 10) as i64)
                    .push_bind(T0 + s as i64 * 1000)
                    .push_bind(format!("(01){GTIN}(17)301231(10)LOT{}(21)C{s:08}", s % 100))
                    .push_bind(GTIN)
                    .push_bind(format!("C{s:08}"))
                    .push_bind(format!("LOT{}", s % 100))
                    .push_bind("cheek")
                    .push_bind(1.0)
                    .push_bind((s * 10 + 9) as i64)
                    .push_bind(T0 + s as i64 * 1000 + 600_000)
                    .push_bind(600_000i64)
                    .push_bind(72_000i64)
                    .push_bind(600.0)
                    .push_bind(1.0);
            },
        );
        let rules = ["CARTRIDGE_REUSE", "PEN_NOT_DISINFECTED", "DEPTH_LIMIT", "TELEMETRY_GAP", "CARTRIDGE_EXPIRED"];
        insert_rows!(
            tx,
            "INSERT INTO violations (rule, severity, explanation, pen_serial, clinic_id, chain_id, session_id,
             cartridge_gtin, cartridge_serial, device_time_ms, detected_ms, change_seq) ",
            0..violations,
            |mut row, v| {
                // Spread over sessions, about every other one, over every clinic.
                let s = (v * 2 + v % 2) % sessions.max(1);
                let pen = s % PENS;
                let clinic = pen % CLINICS;
                row.push_bind(rules[v % rules.len()])
                    .push_bind("critical")
                    .push_bind("seeded for the API benchmark")
                    .push_bind(format!("PW-{pen:06}"))
                    .push_bind(format!("clinic-{clinic}"))
                    .push_bind(format!("chain-{}", clinic % CHAINS))
                    .push_bind(format!("s{s}"))
                    .push_bind(GTIN)
                    .push_bind(format!("C{s:08}"))
                    .push_bind(T0 + s as i64 * 1000)
                    .push_bind(T0 + s as i64 * 1000)
                    .push_bind(v as i64 + 1);
            },
        );
        tx.commit().await.expect("commit");
        // No ANALYZE on SQLite: penwarden never runs it on its store, so the API benchmark
        // measures the query plans a real store gets.
        $db.close().await.expect("close");
    }};
}
use seed_rows;

/// Inserts a row per item, `ROWS` rows per statement (a macro: the query builder's backend is
/// the transaction's).
macro_rules! insert_rows {
    ($tx:expr, $insert:expr, $items:expr, $push:expr $(,)?) => {{
        let items: Vec<usize> = $items.collect();
        for chunk in items.chunks(ROWS) {
            let mut query = QueryBuilder::new($insert);
            query.push_values(chunk.iter().copied(), $push);
            query.build().execute(&mut *$tx).await.expect("insert");
        }
    }};
}
use insert_rows;
