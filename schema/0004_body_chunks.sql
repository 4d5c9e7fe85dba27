-- 0004: message bodies streamed to the queue as they arrive.
--
-- A body larger than one piece (64 KiB) is written while it is still being
-- received: its full pieces go to body_chunks (seq 0, 1, ...) as they fill,
-- inside the loop's turn transactions, and what is left at end of data
-- stays in messages.body, as small messages keep all of theirs. The stored
-- message is the chunks in seq order followed by messages.body.
--
-- Until end of data the chunks belong to no row of messages, so the views
-- do not see them; a session that fails deletes its own, and start-up
-- deletes any a crash left behind (chunks whose message_id is not in
-- messages). Not a foreign key for that reason.

-- How many rows of body_chunks come before messages.body; 0 for a body
-- kept whole in its row. Set back to 0 when the body is dropped.
ALTER TABLE messages ADD COLUMN chunks INTEGER NOT NULL DEFAULT 0
    CHECK (chunks >= 0);

CREATE TABLE body_chunks (
    id         INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL,                 -- queue ID, as in messages.id
    seq        INTEGER NOT NULL CHECK (seq >= 0),
    data       BLOB NOT NULL
);

-- Reading a body piece by piece, and dropping it whole.
CREATE UNIQUE INDEX body_chunks_message ON body_chunks (message_id, seq);
