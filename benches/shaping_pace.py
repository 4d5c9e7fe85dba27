#!/usr/bin/env python3
"""shaping_pace.py - issue 15's shaping check at full size: a burst of
MESSAGES to a next hop shaped with max_messages_per_minute = RATE must
arrive at RATE/60 a second (within 10%), while the same burst to an
unshaped next hop on the same relay is not slowed.

It starts the given mailhop with two [routes] to two sinks on loopback
(a small SMTP server in this script that notes when each message ends),
sends both bursts over one session each, and prints the shaped hop's rate
over its arrivals (first to last), the largest gap, and how long the
unshaped hop took. Exit status 1 if the rate is off by more than 10%.

At the defaults (1,000 messages, 120 a minute) it runs about 8.5 minutes.

Usage: python3 benches/shaping_pace.py MAILHOP_BINARY [MESSAGES] [RATE]
"""
import os, shutil, signal, smtplib, socket, subprocess, sys, tempfile, threading, time

def sink():
    """An SMTP server on 127.0.0.1:<free port>; returns (port, arrival times)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    arrivals = []

    def session(conn):
        f = conn.makefile("rb")
        conn.sendall(b"220 sink\r\n")
        in_data = False
        for line in f:
            if in_data:
                if line == b".\r\n":
                    arrivals.append(time.monotonic())
                    in_data = False
                    conn.sendall(b"250 ok\r\n")
                continue
            verb = line[:4].upper()
            if verb == b"DATA":
                in_data = True
                conn.sendall(b"354 go\r\n")
            elif verb == b"QUIT":
                conn.sendall(b"221 bye\r\n")
                break
            elif verb == b"EHLO":
                conn.sendall(b"250 sink\r\n")
            else:
                conn.sendall(b"250 ok\r\n")
        conn.close()

    def accept():
        while True:
            conn, _ = listener.accept()
            threading.Thread(target=session, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1], arrivals

def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port

def burst(port, rcpt, n):
    with smtplib.SMTP("127.0.0.1", port) as s:
        for i in range(n):
            s.sendmail("s@sender.test", [rcpt], f"Subject: {i}\r\n\r\nhi\r\n")

def wait_for(arrivals, n, limit):
    deadline = time.monotonic() + limit
    while len(arrivals) < n and time.monotonic() < deadline:
        time.sleep(0.2)
    return len(arrivals) >= n

def main():
    binary = os.path.abspath(sys.argv[1])
    messages = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    rate = int(sys.argv[3]) if len(sys.argv) > 3 else 120
    shaped_port, shaped = sink()
    free_port_, free = sink()
    listen = free_port()
    work = tempfile.mkdtemp(prefix="shaping-pace-")
    with open(os.path.join(work, "mailhop.toml"), "w") as f:
        f.write(f'hostname = "alpha.test"\nlisten = ["127.0.0.1:{listen}"]\n'
                f'queue = "mailhop.db"\n[routes]\n'
                f'"shaped.test" = "127.0.0.1:{shaped_port}"\n'
                f'"free.test" = "127.0.0.1:{free_port_}"\n'
                f'[shaping."127.0.0.1:{shaped_port}"]\nmax_messages_per_minute = {rate}\n')
    relay = subprocess.Popen([binary, "serve", "--config", "mailhop.toml"], cwd=work,
                             stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", listen), 0.1).close()
                break
            except OSError:
                time.sleep(0.1)
        started = time.monotonic()
        threads = [threading.Thread(target=burst, args=(listen, r, messages))
                   for r in ("u@shaped.test", "u@free.test")]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        accepted = time.monotonic() - started
        wait_for(free, messages, 120)
        free_done = max(free) - started if free else float("nan")
        expected = messages * 60 / rate
        if not wait_for(shaped, messages, expected * 1.5 + 60):
            print(f"shaped hop got {len(shaped)} of {messages}")
            return 1
    finally:
        relay.send_signal(signal.SIGTERM)
        relay.wait(30)
        shutil.rmtree(work, ignore_errors=True)
    t = sorted(shaped)
    span = t[-1] - t[0]
    measured = (len(t) - 1) / span
    gap = max(b - a for a, b in zip(t, t[1:]))
    print(f"both bursts of {messages} accepted in {accepted:.2f} s")
    print(f"unshaped hop: all {messages} delivered {free_done:.2f} s after the start")
    print(f"shaped hop ({rate}/min = {rate / 60:.2f}/s): {measured:.3f} msg/s over {span:.1f} s, "
          f"largest gap {gap:.2f} s")
    off = abs(measured - rate / 60) / (rate / 60)
    print(f"rate off by {off * 100:.1f}% ({'within' if off <= 0.10 else 'outside'} 10%)")
    return 0 if off <= 0.10 else 1

if __name__ == "__main__":
    sys.exit(main())
