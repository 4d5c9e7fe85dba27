-- 0006: traffic shaping per next hop. The limits in force on each next hop
-- (from `[shaping]`, or lowered by its "slow down" replies) and why, kept
-- beside the hop's state. NULL: no limit.

ALTER TABLE host_state ADD COLUMN rate_limit INTEGER         -- messages per minute
    CHECK (rate_limit IS NULL OR rate_limit > 0);
ALTER TABLE host_state ADD COLUMN connection_limit INTEGER
    CHECK (connection_limit IS NULL OR connection_limit > 0);
-- 'config', or the reply that lowered them and until when it waits.
ALTER TABLE host_state ADD COLUMN shaped_reason TEXT;

-- `hosts` keeps its columns, in order (a stable interface); the limits
-- come after them.
DROP VIEW hosts;
CREATE VIEW hosts AS
SELECT h.next_hop, h.state, h.failures, h.last_error, h.next_retry,
       (SELECT count(*) FROM recipients AS r
        WHERE r.next_hop = h.next_hop
          AND (r.status = 'queued' OR r.status = 'deferred' OR r.status = 'active' OR r.status = 'held')) AS queued,
       h.rate_limit, h.connection_limit, h.shaped_reason
FROM host_state AS h;
