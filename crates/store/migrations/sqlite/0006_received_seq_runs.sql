-- The sequence numbers received from each pen, telemetry and events alike, as runs of
-- consecutive numbers: one small row per pen changes per batch, where telemetry_seqs grew by a
-- row (and a scattered B-tree page) per message.
CREATE TABLE received_seq_runs (
    pen_serial  TEXT NOT NULL,
    first_seq   BIGINT NOT NULL,
    last_seq    BIGINT NOT NULL,
    -- Runs of a pen never overlap, so the last number identifies one; the runs that a new
    -- number can touch are found from it.
    PRIMARY KEY (pen_serial, last_seq)
) WITHOUT ROWID;

INSERT INTO received_seq_runs (pen_serial, first_seq, last_seq)
SELECT pen_serial, MIN(seq), MAX(seq)
FROM (
    SELECT pen_serial, seq, seq - ROW_NUMBER() OVER (PARTITION BY pen_serial ORDER BY seq) AS island
    FROM (SELECT pen_serial, seq FROM telemetry_seqs UNION SELECT pen_serial, seq FROM pen_events)
)
GROUP BY pen_serial, island;

DROP TABLE telemetry_seqs;
