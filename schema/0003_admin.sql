-- 0003: what the operator's `mailhop queue` commands need.

-- Set by `mailhop queue delete` on a recipient that is being delivered at
-- that moment (status 'active'): the attempt in flight cannot be recalled,
-- so when it ends without delivering or bouncing the recipient, the outcome
-- becomes 'deleted' instead of 'deferred' (and a restart does not requeue it).
ALTER TABLE recipients ADD COLUMN delete_requested INTEGER NOT NULL DEFAULT 0
    CHECK (delete_requested IN (0, 1));

-- `mailhop queue show` and "the attempts of one message" in sqlite3 look up
-- the history by queue ID; without this every lookup scans all of it.
CREATE INDEX attempt_log_message ON attempt_log (message_id);
