-- Cartridge lots registered by manufacturers (with the key that signs their cartridges),
-- operators with their licence level, and the signature each session's cartridge presented.

CREATE TABLE lots (
    gtin             TEXT NOT NULL,
    lot              TEXT NOT NULL,
    expiry           TEXT NOT NULL,
    manufacturer_id  TEXT NOT NULL,
    public_key       BLOB NOT NULL,
    registered_ms    BIGINT NOT NULL,
    recalled_ms      BIGINT,
    recall_reason    TEXT,
    PRIMARY KEY (gtin, lot)
);

CREATE TABLE operators (
    operator_id    TEXT PRIMARY KEY,
    licence_level  INTEGER NOT NULL,
    registered_ms  BIGINT NOT NULL
);

ALTER TABLE sessions ADD COLUMN cartridge_signature BLOB;
CREATE INDEX sessions_lot ON sessions (cartridge_gtin, cartridge_lot);
