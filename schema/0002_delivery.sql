-- 0002: the delivery half: attempt history, per-next-hop state, the delay
-- warning flag, and the two views `attempts` and `hosts`. Same time format
-- and CHECK style as 0001.

-- Set once the delay warning for the message went out (one per message).
ALTER TABLE messages ADD COLUMN warned INTEGER NOT NULL DEFAULT 0
    CHECK (warned IN (0, 1));

-- Every delivery attempt, appended in the same commit as its outcome. Not a
-- foreign key to messages: history is pruned by time, on its own schedule.
CREATE TABLE attempt_log (
    id          INTEGER PRIMARY KEY,
    message_id  TEXT NOT NULL,                -- queue ID
    recipient   TEXT NOT NULL,                -- mailbox, user@domain
    next_hop    TEXT NOT NULL,
    host        TEXT NOT NULL,                -- address connected to, or 'local'
    started_at  TEXT NOT NULL
        CHECK (started_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z'),
    finished_at TEXT NOT NULL
        CHECK (finished_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z'),
    reply       TEXT NOT NULL                 -- reply line or connection error
);

-- Pruning walks the history oldest first.
CREATE INDEX attempt_log_finished ON attempt_log (finished_at);

-- One row per next hop that has been tried. A failing hop holds back its
-- own waiting recipients until next_retry.
CREATE TABLE host_state (
    next_hop   TEXT PRIMARY KEY NOT NULL,
    state      TEXT NOT NULL DEFAULT 'up' CHECK (state IN ('up', 'failing')),
    failures   INTEGER NOT NULL DEFAULT 0 CHECK (failures >= 0),
    last_error TEXT,
    next_retry TEXT
        CHECK (next_retry IS NULL OR next_retry GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z')
);

-- Pending recipients per next hop: the `queued` count of `hosts` (covered,
-- with status) and the hold-back of a failing hop. A query must repeat the
-- WHERE term below exactly to use it. (Comparisons rather than an IN list:
-- SQLite evaluates this for every row written, and an IN list of more than
-- two constants costs a temporary b-tree each time.)
CREATE INDEX recipients_pending_hop ON recipients (next_hop, status)
    WHERE (status = 'queued' OR status = 'deferred' OR status = 'active' OR status = 'held');

-- Final recipients oldest first, for pruning the history. Repeat the WHERE
-- term exactly, as above.
CREATE INDEX recipients_finished ON recipients (finished_at)
    WHERE (status = 'delivered' OR status = 'bounced' OR status = 'expired' OR status = 'deleted');

-- Public, stable interface: every delivery attempt.
CREATE VIEW attempts AS
SELECT message_id AS id, recipient, next_hop, host, started_at, finished_at,
       reply
FROM attempt_log;

-- Public, stable interface: one row per next hop that has been tried, with
-- the number of recipients waiting for it.
CREATE VIEW hosts AS
SELECT h.next_hop, h.state, h.failures, h.last_error, h.next_retry,
       (SELECT count(*) FROM recipients AS r
        WHERE r.next_hop = h.next_hop
          AND (r.status = 'queued' OR r.status = 'deferred' OR r.status = 'active' OR r.status = 'held')) AS queued
FROM host_state AS h;
