-- 0001: the message store, per-recipient delivery state, and the two views
-- operators read with sqlite3. Applied by src/queue in one transaction;
-- PRAGMA user_version records that it ran.
--
-- Times are ISO 8601 UTC text, 'YYYY-MM-DDTHH:MM:SSZ', so they sort and
-- compare as strings. The CHECKs reject other shapes (such as datetime('now'),
-- which has a space and would compare wrongly) from hand-written updates.

-- One row per accepted message: the envelope as received and the body as
-- stored (our Received: line first, CRLF line ends). Written once, never
-- changed; delivery progress lives in recipients.
CREATE TABLE messages (
    id           TEXT PRIMARY KEY NOT NULL,   -- queue ID from the 250 reply
    sender       TEXT NOT NULL,               -- mailbox; '' for the null sender
    reverse_path TEXT NOT NULL,               -- as received, with any source route
    client_ip    TEXT NOT NULL,
    helo         TEXT NOT NULL,
    received_at  TEXT NOT NULL
        CHECK (received_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z'),
    size         INTEGER NOT NULL CHECK (size >= 0),  -- octets of body
    eight_bit    INTEGER NOT NULL CHECK (eight_bit IN (0, 1)),
    smtputf8     INTEGER NOT NULL CHECK (smtputf8 IN (0, 1)),
    body         BLOB NOT NULL
);

-- One row per recipient of a message: where it goes next and how far it got.
-- Pending statuses: queued (never tried), deferred (tried, will retry),
-- active (leased by the running process), held (by the operator).
-- Final statuses: delivered, bounced, expired, deleted.
CREATE TABLE recipients (
    id           INTEGER PRIMARY KEY,
    message_id   TEXT NOT NULL REFERENCES messages (id) ON DELETE CASCADE,
    recipient    TEXT NOT NULL,               -- mailbox, user@domain
    forward_path TEXT NOT NULL,               -- full, with any source route
    next_hop     TEXT NOT NULL,               -- 'local', a [routes] target, or the MX domain
    status       TEXT NOT NULL DEFAULT 'queued'
        -- Comparisons, not IN: SQLite builds a temporary b-tree for an IN
        -- list of more than two constants each time a row is written.
        CHECK (status = 'queued' OR status = 'deferred' OR status = 'active'
               OR status = 'held' OR status = 'delivered' OR status = 'bounced'
               OR status = 'expired' OR status = 'deleted'),
    attempts     INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    next_attempt TEXT NOT NULL
        CHECK (next_attempt GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z'),
    last_reply   TEXT,                        -- last reply or connection error
    finished_at  TEXT
        CHECK (finished_at IS NULL OR finished_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z')
);

-- Due work: only waiting rows are indexed, so the index stays as small as
-- the backlog however long the history grows. A query must repeat
-- "status IN ('queued', 'deferred')" exactly for SQLite to use it.
CREATE INDEX recipients_due ON recipients (next_attempt)
    WHERE status IN ('queued', 'deferred');

-- The recipients of one message (finishing a message, deleting by queue ID).
CREATE INDEX recipients_message ON recipients (message_id);

-- Public, stable interface: one row per pending recipient.
CREATE VIEW queue AS
SELECT m.id, m.sender, r.recipient, r.next_hop, r.status, r.attempts,
       r.next_attempt, r.last_reply, m.size, m.received_at
FROM recipients AS r
JOIN messages AS m ON m.id = r.message_id
WHERE (r.status = 'queued' OR r.status = 'deferred' OR r.status = 'active' OR r.status = 'held');

-- Public, stable interface: one row per recipient in a final state.
CREATE VIEW deliveries AS
SELECT m.id, m.sender, r.recipient, r.next_hop, r.status, r.attempts,
       r.last_reply AS reply, r.finished_at
FROM recipients AS r
JOIN messages AS m ON m.id = r.message_id
WHERE (r.status = 'delivered' OR r.status = 'bounced' OR r.status = 'expired' OR r.status = 'deleted');
