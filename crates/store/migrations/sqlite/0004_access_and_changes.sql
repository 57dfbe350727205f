-- API keys: only a SHA-256 digest of each secret is kept. Revoked keys stay for the record.
CREATE TABLE api_keys (
    key_id         TEXT PRIMARY KEY,
    secret_digest  TEXT NOT NULL,
    role           TEXT NOT NULL,
    scope          TEXT NOT NULL DEFAULT '',
    label          TEXT NOT NULL DEFAULT '',
    created_ms     BIGINT NOT NULL,
    revoked_ms     BIGINT
);

-- A manufacturer sees its own pens wherever they are.
ALTER TABLE pens ADD COLUMN manufacturer_id TEXT;

-- Every raise or retraction of a violation takes the next change number, so a watcher can
-- resume from the last one it saw and miss nothing.
ALTER TABLE violations ADD COLUMN change_seq BIGINT;
UPDATE violations SET change_seq = id;
CREATE INDEX violations_change ON violations (change_seq);
CREATE INDEX sessions_clinic_start ON sessions (clinic_id, started_ms);
CREATE INDEX sessions_chain_start ON sessions (chain_id, started_ms);
