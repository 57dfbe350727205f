-- The compliance record. Portable SQL (SQLite now, PostgreSQL later): no AUTOINCREMENT
-- keyword, no SQLite-only types; times are Unix milliseconds in BIGINT.

CREATE TABLE chains (
    chain_id      TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    created_ms    BIGINT NOT NULL
);

CREATE TABLE clinics (
    clinic_id     TEXT PRIMARY KEY,
    chain_id      TEXT NOT NULL REFERENCES chains (chain_id),
    name          TEXT NOT NULL,
    created_ms    BIGINT NOT NULL
);

CREATE TABLE pens (
    pen_serial      TEXT PRIMARY KEY,
    clinic_id       TEXT REFERENCES clinics (clinic_id),
    model           TEXT NOT NULL DEFAULT '',
    firmware        TEXT NOT NULL DEFAULT '',
    online          BOOLEAN NOT NULL DEFAULT FALSE,
    state_time_ms   BIGINT,
    last_seen_ms    BIGINT,
    battery_pct     DOUBLE PRECISION,
    motor_hours     DOUBLE PRECISION,
    auto_registered BOOLEAN NOT NULL DEFAULT FALSE,
    registered_ms   BIGINT NOT NULL
);

CREATE TABLE cartridges (
    gtin          TEXT NOT NULL,
    serial        TEXT NOT NULL,
    lot           TEXT NOT NULL,
    expiry        TEXT NOT NULL,
    first_seen_ms BIGINT NOT NULL,
    PRIMARY KEY (gtin, serial)
);
CREATE INDEX cartridges_lot ON cartridges (gtin, lot);

-- Every device event, once: (pen_serial, seq) makes redelivery idempotent.
CREATE TABLE pen_events (
    pen_serial      TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    kind            TEXT NOT NULL,
    device_time_ms  BIGINT NOT NULL,
    received_ms     BIGINT NOT NULL,
    session_id      TEXT,
    sheath_changed  BOOLEAN,
    detail          TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (pen_serial, seq)
);

-- One row per session; start and end may arrive in either order.
CREATE TABLE sessions (
    pen_serial        TEXT NOT NULL,
    session_id        TEXT NOT NULL,
    clinic_id         TEXT,
    chain_id          TEXT,
    start_seq         BIGINT,
    started_ms        BIGINT,
    cartridge_udi     TEXT,
    cartridge_gtin    TEXT,
    cartridge_serial  TEXT,
    cartridge_lot     TEXT,
    operator_id       TEXT,
    area              TEXT,
    depth_setting_mm  DOUBLE PRECISION,
    end_seq           BIGINT,
    ended_ms          BIGINT,
    duration_ms       BIGINT,
    strokes           BIGINT,
    motor_seconds     DOUBLE PRECISION,
    max_depth_mm      DOUBLE PRECISION,
    PRIMARY KEY (pen_serial, session_id)
);
CREATE INDEX sessions_cartridge ON sessions (cartridge_gtin, cartridge_serial);
CREATE INDEX sessions_pen_start ON sessions (pen_serial, start_seq);

-- Violations are never deleted: when later evidence withdraws one, it is retracted in place.
CREATE TABLE violations (
    id                 INTEGER PRIMARY KEY,
    rule               TEXT NOT NULL,
    severity           TEXT NOT NULL,
    explanation        TEXT NOT NULL,
    pen_serial         TEXT NOT NULL,
    clinic_id          TEXT,
    chain_id           TEXT,
    session_id         TEXT NOT NULL,
    cartridge_gtin     TEXT,
    cartridge_serial   TEXT,
    device_time_ms     BIGINT NOT NULL,
    detected_ms        BIGINT NOT NULL,
    retracted_ms       BIGINT,
    retraction_reason  TEXT
);
CREATE UNIQUE INDEX violations_one_active ON violations (rule, pen_serial, session_id) WHERE retracted_ms IS NULL;
CREATE INDEX violations_clinic ON violations (clinic_id, id);
CREATE INDEX violations_pen ON violations (pen_serial, id);

CREATE TABLE quarantine (
    id               INTEGER PRIMARY KEY,
    received_ms      BIGINT NOT NULL,
    topic            TEXT NOT NULL,
    pen_serial       TEXT,
    reason           TEXT NOT NULL,
    detail           TEXT NOT NULL,
    payload_excerpt  TEXT NOT NULL,
    payload_len      BIGINT NOT NULL
);
CREATE INDEX quarantine_reason ON quarantine (reason, id);

-- Time-series points derived from the record (sessions, violations, status), written in the
-- same transaction as the facts they come from, and deleted once InfluxDB accepted them.
CREATE TABLE influx_outbox (
    id          INTEGER PRIMARY KEY,
    lines       TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);
