-- Several instances drain one outbox: an instance claims the rows it is about to deliver
-- until this time (ms since the epoch), so no other instance delivers them meanwhile. A claim
-- left by an instance that died expires, and the rows are claimed again.
ALTER TABLE influx_outbox ADD COLUMN claimed_until_ms BIGINT;
