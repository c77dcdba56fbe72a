-- The call that wrote a journal intent. A begin sent again because the acknowledgement of its
-- transaction was lost (the connection dropped at COMMIT) finds its own pending row by this token
-- and goes ahead, instead of taking the row for another call's operation in progress.
ALTER TABLE journal ADD COLUMN intent_token uuid;
