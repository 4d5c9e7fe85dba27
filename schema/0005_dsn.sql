-- 0005: Delivery Status Notification parameters (RFC 3461), as received:
-- RET and ENVID on the message, NOTIFY and ORCPT on each recipient. NULL
-- where the client gave none (then failures and delays are reported, and a
-- failure report carries the whole message, as before).

ALTER TABLE messages ADD COLUMN ret TEXT
    CHECK (ret IS NULL OR ret = 'FULL' OR ret = 'HDRS');
ALTER TABLE messages ADD COLUMN envid TEXT;        -- decoded from xtext

-- 'NEVER', or a comma list of SUCCESS, FAILURE, DELAY in that order.
ALTER TABLE recipients ADD COLUMN notify TEXT;
-- 'addr-type;address', decoded from xtext ('rfc822;user@example.org').
ALTER TABLE recipients ADD COLUMN orcpt TEXT;

-- The views of 0001 keep their columns (a stable interface, SPEC 4); the
-- parameters have a view of their own, one row per pending recipient like
-- `queue`, to join on (id, recipient).
CREATE VIEW dsn AS
SELECT m.id, r.recipient, r.notify, r.orcpt, m.envid, m.ret
FROM recipients AS r
JOIN messages AS m ON m.id = r.message_id
WHERE (r.status = 'queued' OR r.status = 'deferred' OR r.status = 'active' OR r.status = 'held');
