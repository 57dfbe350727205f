-- The other session a violation's explanation names (the first use of a reused cartridge, a
-- pen's previous session): it may be another tenant's, and a reader who may not see it gets
-- an explanation without it.
ALTER TABLE violations ADD COLUMN related_pen TEXT;
ALTER TABLE violations ADD COLUMN related_session_id TEXT;

-- Violations recorded before: read the session back from the explanation's fixed wording
-- (ids and serials hold no spaces).
UPDATE violations
SET related_session_id = substr(explanation, 39, instr(explanation, ' on pen ') - 39),
    related_pen = substr(explanation, instr(explanation, ' on pen ') + 8,
                         instr(explanation, ' (started ') - instr(explanation, ' on pen ') - 8)
WHERE rule = 'CARTRIDGE_REUSE' AND explanation LIKE 'cartridge was already used in session % on pen % (started %';

UPDATE violations
SET related_pen = pen_serial,
    related_session_id = substr(explanation, instr(explanation, ' between session ') + 17,
                                instr(explanation, ' and this session') - instr(explanation, ' between session ') - 17)
WHERE rule = 'PEN_NOT_DISINFECTED' AND explanation LIKE 'no disinfection % between session % and this session';
