-- The audit trail (penwarden_domain::audit): every API call and every change, appended as a
-- hash chain. seq runs 1, 2, 3 … without gaps; each entry holds the previous entry's hash
-- and its own, over its content.
CREATE TABLE audit_log (
    seq            INTEGER PRIMARY KEY,
    time_ms        BIGINT NOT NULL,
    key_id         TEXT NOT NULL,
    role           TEXT NOT NULL,
    scope          TEXT NOT NULL,
    method         TEXT NOT NULL,
    request        TEXT NOT NULL,
    status         TEXT NOT NULL,
    records        BIGINT NOT NULL,
    previous_hash  TEXT NOT NULL,
    hash           TEXT NOT NULL
);

-- Append only, as far as the database can say so: an edit or a deletion needs the triggers
-- dropped first, and the hash chain shows it then.
CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
