-- A quarantined message's whole payload (when it was not cut for being over the size limit),
-- so that an operator can replay it after review, and when it was replayed (each once).
ALTER TABLE quarantine ADD COLUMN payload BLOB;
ALTER TABLE quarantine ADD COLUMN replayed_ms BIGINT;
