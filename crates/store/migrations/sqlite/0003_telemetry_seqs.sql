-- The sequence numbers of telemetry messages received, so TELEMETRY_GAP can tell which numbers
-- between a session's start and end never arrived (events are in pen_events already).
CREATE TABLE telemetry_seqs (
    pen_serial  TEXT NOT NULL,
    seq         BIGINT NOT NULL,
    PRIMARY KEY (pen_serial, seq)
);
