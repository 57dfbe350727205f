-- Births and last wills, as history: the firmware a birth announces is in force from its seq
-- on (PEN_SERVICE_DUE judges a session by the last firmware report before it, birth or status,
-- by seq), and a pen's current state is its state message with the highest seq, not the
-- newest device time (a clock 23 h ahead must not pin it).
ALTER TABLE pens ADD COLUMN state_seq BIGINT;
CREATE TABLE pen_states (
    pen_serial      TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    online          BOOLEAN NOT NULL,
    device_time_ms  BIGINT NOT NULL,
    firmware        TEXT NOT NULL,
    model           TEXT NOT NULL,
    received_ms     BIGINT NOT NULL,
    -- A birth and the last will composed with it share a seq.
    PRIMARY KEY (pen_serial, seq, online)
);
