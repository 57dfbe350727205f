-- A session's active violations, read for every session a query shows (GetCartridge, lot
-- traces, reports): answered from this index alone. Before, SQLite walked every violation of
-- the pen through violations_pen and read each row from the table.
CREATE INDEX violations_session ON violations (pen_serial, session_id, retracted_ms, rule);
