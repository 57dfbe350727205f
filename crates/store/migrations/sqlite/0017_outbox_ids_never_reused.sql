-- Outbox ids are never handed out twice (AUTOINCREMENT). Without it SQLite gives a new row the
-- largest id + 1, so once the newest row is delivered and deleted the next row gets the same id
-- again; with several instances draining the outbox, one still delivering the old row would
-- then delete the new one by that id, unread (a derived point lost).
CREATE TABLE influx_outbox_numbered (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    lines       TEXT NOT NULL,
    created_ms  BIGINT NOT NULL
);
INSERT INTO influx_outbox_numbered (id, lines, created_ms) SELECT id, lines, created_ms FROM influx_outbox;
DROP TABLE influx_outbox;
ALTER TABLE influx_outbox_numbered RENAME TO influx_outbox;
