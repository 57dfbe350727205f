-- API keys may expire (a rotated key keeps working for a grace period, then stops), and
-- record when they were last used (written at most once a minute per key).
ALTER TABLE api_keys ADD COLUMN expires_ms BIGINT;
ALTER TABLE api_keys ADD COLUMN last_used_ms BIGINT;
