-- Every relation has an owner who alone may change it (the domain's ownership rules).
-- An operator belongs to the chain that registered it; NULL: registered by an admin, changed
-- only by admins.
ALTER TABLE operators ADD COLUMN owner_chain_id TEXT;

-- GTINs (14 digits) and GS1 company prefixes (4 to 12 digits) assigned to manufacturers by an
-- admin: only a GTIN's holder registers lots under it. Assignments of different manufacturers
-- never overlap.
CREATE TABLE gtin_assignments (
    prefix           TEXT PRIMARY KEY,
    manufacturer_id  TEXT NOT NULL,
    assigned_ms      BIGINT NOT NULL
);

-- What the record already shows: a GTIN whose lots all come from one manufacturer is that
-- manufacturer's. A GTIN claimed by several stays unassigned until an admin assigns it.
INSERT INTO gtin_assignments (prefix, manufacturer_id, assigned_ms)
SELECT gtin, MIN(manufacturer_id), MIN(registered_ms) FROM lots
GROUP BY gtin HAVING COUNT(DISTINCT manufacturer_id) = 1;
