-- What each event said, as a digest: a message with a (pen, seq) already recorded is a
-- redelivery only when it says the same; otherwise it is a conflict (a pen that restarted its
-- counter) and goes to the quarantine instead of vanishing as a duplicate. Events recorded
-- before this column existed have none and are taken as the same.
ALTER TABLE pen_events ADD COLUMN content_digest BLOB;
