-- The condition a pen reported with each status event, so PEN_SERVICE_DUE judges a session by
-- the pen's last status before it (by sequence number), whatever order they arrived in.
ALTER TABLE pen_events ADD COLUMN motor_hours DOUBLE PRECISION;
ALTER TABLE pen_events ADD COLUMN firmware TEXT;
CREATE INDEX pen_events_kind ON pen_events (pen_serial, kind, seq);
