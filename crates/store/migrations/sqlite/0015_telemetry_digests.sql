-- What each pen's recent telemetry messages said, as a 64-bit digest in one of a fixed number of
-- slots per pen (slot = seq mod the slot count, overwritten by newer numbers). A telemetry
-- message with a (pen, seq) already received is a redelivery only when its slot still holds that
-- seq with the same digest; otherwise it is a conflict (a pen that restarted its counter). The
-- table stays at most pens x slots rows: a redelivery comes from the broker's in-flight window,
-- which a pen's last slots cover, so no older digest is ever needed.
CREATE TABLE telemetry_digests (
    pen_serial  TEXT NOT NULL,
    slot        INTEGER NOT NULL,
    seq         BIGINT NOT NULL,
    digest      BIGINT NOT NULL,
    PRIMARY KEY (pen_serial, slot)
) WITHOUT ROWID;
