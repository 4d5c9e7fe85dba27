-- 0007: MTA-STS (RFC 8461). The policy cached for each mail domain, with
-- the outcome of its last fetch; and each attempt's TLS result under a
-- policy (RFC 8460 result types), so a TLS-RPT report can be summed from
-- the history. Same time format and CHECK style as 0001.

CREATE TABLE sts_policies (
    domain       TEXT PRIMARY KEY NOT NULL,   -- the mail domain, lower case
    -- The cached policy: NULL until a fetch succeeds (a failed fetch
    -- leaves the last good one as it was).
    policy_id    TEXT,                        -- the TXT record's id it was fetched for
    mode         TEXT CHECK (mode IS NULL OR mode IN ('enforce', 'testing', 'none')),
    mx           TEXT,                        -- the mx patterns, space-separated
    max_age      INTEGER CHECK (max_age IS NULL OR max_age >= 0),
    fetched_at   TEXT
        CHECK (fetched_at IS NULL OR fetched_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z'),
    expires_at   TEXT
        CHECK (expires_at IS NULL OR expires_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z'),
    -- The last fetch, good or bad: when, which id, and why it failed
    -- (NULL after a good one).
    last_attempt TEXT
        CHECK (last_attempt IS NULL OR last_attempt GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]Z'),
    last_id      TEXT,
    last_error   TEXT
);

-- Public, stable interface: one row per domain whose policy was fetched
-- (or tried). `expired` says whether the cached policy still applies.
CREATE VIEW policies AS
SELECT domain, policy_id AS id, mode, mx, max_age, fetched_at, expires_at,
       CASE WHEN expires_at IS NULL THEN NULL
            WHEN expires_at <= strftime('%Y-%m-%dT%H:%M:%SZ', 'now') THEN 1
            ELSE 0 END AS expired,
       last_attempt, last_id, last_error
FROM sts_policies;

-- Under a policy: its mode ('enforce', 'testing') and what TLS with the
-- host came to ('success', or an RFC 8460 result type such as
-- 'starttls-not-supported', 'certificate-not-trusted', 'validation-failure').
-- NULL for attempts without a policy.
ALTER TABLE attempt_log ADD COLUMN sts_mode TEXT
    CHECK (sts_mode IS NULL OR sts_mode IN ('enforce', 'testing'));
ALTER TABLE attempt_log ADD COLUMN tls_result TEXT;

-- `attempts` keeps its columns, in order (a stable interface); the TLS
-- ones come after them.
DROP VIEW attempts;
CREATE VIEW attempts AS
SELECT message_id AS id, recipient, next_hop, host, started_at, finished_at,
       reply, sts_mode, tls_result
FROM attempt_log;
