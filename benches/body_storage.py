#!/usr/bin/env python3
"""body_storage.py - the two ways issue 12 named for streaming a body into
SQLite, measured on the same settings as the queue (WAL, synchronous=FULL,
one commit per group of messages):

  chunks  a row per 64 KiB piece in a table of its own (what mailhop does);
  blob    a row with a pre-sized zeroblob, filled by incremental BLOB I/O.

A blob cannot grow or shrink after it is made, and SMTP says the size only
at the end (SIZE= is optional and may lie), so "blob" must pre-size to the
largest allowed message; its cost for messages smaller than that limit is
part of the measurement (SIZES below). Prints seconds and MB/s per case.

Usage: python3 benches/body_storage.py [DIR]   (default: a temp dir)
"""
import os, sqlite3, sys, tempfile, time

PIECE = 64 * 1024
LIMIT = 10 * 1024 * 1024          # max_message_size: what a blob must be
SIZES = [(10 * 1024 * 1024, 20), (1024 * 1024, 100), (100 * 1024, 400)]
GROUP = 10                        # messages per commit

def open_db(path):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.executescript("""
        CREATE TABLE messages (id TEXT PRIMARY KEY, size INTEGER, body BLOB);
        CREATE TABLE body_chunks (id INTEGER PRIMARY KEY, message_id TEXT, seq INTEGER, data BLOB);
        CREATE UNIQUE INDEX body_chunks_message ON body_chunks (message_id, seq);
    """)
    return db

def chunks(db, n, size, piece):
    db.execute("BEGIN IMMEDIATE")
    for i in range(n):
        mid = f"C{size}-{i}"
        for seq in range(size // PIECE):
            db.execute("INSERT INTO body_chunks (message_id, seq, data) VALUES (?, ?, ?)", (mid, seq, piece))
        db.execute("INSERT INTO messages VALUES (?, ?, ?)", (mid, size, piece[: size % PIECE]))
        if i % GROUP == GROUP - 1:
            db.execute("COMMIT"); db.execute("BEGIN IMMEDIATE")
    db.execute("COMMIT")

def blob(db, n, size, piece):
    db.execute("BEGIN IMMEDIATE")
    for i in range(n):
        mid = f"B{size}-{i}"
        cur = db.execute("INSERT INTO messages VALUES (?, ?, zeroblob(?))", (mid, size, LIMIT))
        with db.blobopen("messages", "body", cur.lastrowid) as b:
            for off in range(0, size, PIECE):
                b.write(piece[: min(PIECE, size - off)])
        if i % GROUP == GROUP - 1:
            db.execute("COMMIT"); db.execute("BEGIN IMMEDIATE")
    db.execute("COMMIT")

def main():
    base = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="body-storage.")
    piece = os.urandom(PIECE)
    print(f"{'case':<8} {'size':>10} {'msgs':>5} {'seconds':>8} {'MB/s':>8} {'file MB':>8}")
    for size, n in SIZES:
        for name, fn in (("chunks", chunks), ("blob", blob)):
            path = os.path.join(base, f"{name}-{size}.db")
            for ext in ("", "-wal", "-shm"):
                if os.path.exists(path + ext):
                    os.remove(path + ext)
            db = open_db(path)
            t = time.perf_counter()
            fn(db, n, size, piece)
            db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            took = time.perf_counter() - t
            db.close()
            mb = os.path.getsize(path) / 1e6
            print(f"{name:<8} {size:>10} {n:>5} {took:>8.2f} {n * size / took / 1e6:>8.1f} {mb:>8.1f}")
            os.remove(path)

if __name__ == "__main__":
    main()
