-- A counter that every change to where pens are (a pen registered, moved to another clinic or
-- given another model; a clinic registered or moved to another chain) moves on, in the same
-- transaction. Every instance sharing the store keeps the pen directory in memory (ingest
-- consults it for every message) and polls this one row to know when to read it again, so a
-- registration made through one instance is used by the others within a poll interval.
CREATE TABLE directory_version (
    id       INTEGER PRIMARY KEY CHECK (id = 1),
    version  BIGINT NOT NULL
);
INSERT INTO directory_version (id, version) VALUES (1, 0);

CREATE TRIGGER pen_registered AFTER INSERT ON pens
BEGIN
    UPDATE directory_version SET version = version + 1;
END;

CREATE TRIGGER pen_placed AFTER UPDATE OF clinic_id, model ON pens
WHEN OLD.clinic_id IS NOT NEW.clinic_id OR OLD.model IS NOT NEW.model
BEGIN
    UPDATE directory_version SET version = version + 1;
END;

CREATE TRIGGER pen_removed AFTER DELETE ON pens
BEGIN
    UPDATE directory_version SET version = version + 1;
END;

CREATE TRIGGER clinic_registered AFTER INSERT ON clinics
BEGIN
    UPDATE directory_version SET version = version + 1;
END;

CREATE TRIGGER clinic_moved AFTER UPDATE OF chain_id ON clinics
WHEN OLD.chain_id IS NOT NEW.chain_id
BEGIN
    UPDATE directory_version SET version = version + 1;
END;
