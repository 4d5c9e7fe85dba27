#!/usr/bin/env python3
"""The traffic smtp-source does not make: STARTTLS + AUTH, wrong passwords,
broken TLS handshakes, odd commands, and a burst of connections past the
per-IP limit. Runs for --seconds, a few sessions per second, loopback only
(the password guesser and the burst come from 127.0.0.2 and 127.0.0.3).

    python3 mix.py --server 127.0.0.1:2525 --seconds 60 --user capture --password PW [--burst 80]
"""
import argparse
import collections
import smtplib
import socket
import ssl
import time

CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE  # the capture's own self-signed certificate


def tls_auth_send(host, port, user, password, to):
    with smtplib.SMTP(host, port, timeout=10) as s:
        s.starttls(context=CTX)
        s.login(user, password)
        s.sendmail("submit@src.example", [to], b"Subject: capture\r\n\r\nover TLS with AUTH\r\n")


def wrong_password(host, port, user, source):
    with smtplib.SMTP(host, port, timeout=10, source_address=(source, 0)) as s:
        s.starttls(context=CTX)
        try:
            s.login(user, "not-the-password")
        except smtplib.SMTPAuthenticationError:
            pass


def broken_handshake(host, port):
    with socket.create_connection((host, port), timeout=10) as c:
        f = c.makefile("rb")
        f.readline()
        c.sendall(b"EHLO broken.example\r\n")
        while f.readline()[3:4] == b"-":
            pass
        c.sendall(b"STARTTLS\r\n")
        f.readline()
        c.sendall(b"this is not a TLS ClientHello\r\n" * 4)
        c.settimeout(3)
        try:
            c.recv(100)
        except OSError:
            pass


def odd_commands(host, port):
    with smtplib.SMTP(host, port, timeout=10) as s:
        s.ehlo()
        for cmd in ("VRFY postmaster", "EXPN staff", "HELP", "NOOP", "FROB now", "RSET"):
            s.docmd(cmd)
        s.docmd("MAIL FROM:<odd@src.example>")
        s.docmd("RCPT TO:<nobody@capture.example>")  # local domain, unknown user: 550
        s.docmd("RSET")


def burst(host, port, n, source):
    """n connections at once from one IP: those past max_connections_per_ip get 421."""
    socks = []
    for _ in range(n):
        try:
            socks.append(socket.create_connection((host, port), timeout=5, source_address=(source, 0)))
        except OSError:
            pass
    time.sleep(2)
    for s in socks:
        s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--server", default="127.0.0.1:2525")
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--user", default="capture")
    ap.add_argument("--password", required=True)
    ap.add_argument("--to", default="tls@dst.example")
    ap.add_argument("--tls-per-second", type=int, default=2)
    ap.add_argument("--fail-per-second", type=int, default=1)
    ap.add_argument("--burst", type=int, default=0, help="connections in one burst each 10 s")
    # Other loopback addresses, so the guesser's lockout and the burst's per-IP
    # limit hit only themselves, not the well-behaved sessions from 127.0.0.1.
    ap.add_argument("--guess-from", default="127.0.0.2")
    ap.add_argument("--burst-from", default="127.0.0.3")
    args = ap.parse_args()
    host, port = args.server.rsplit(":", 1)
    port = int(port)
    end = time.monotonic() + args.seconds
    tick = 0
    errors = collections.Counter()
    while time.monotonic() < end:
        t = time.monotonic()
        jobs = [(tls_auth_send, (host, port, args.user, args.password, args.to))] * args.tls_per_second
        jobs += [(wrong_password, (host, port, args.user, args.guess_from))] * args.fail_per_second
        jobs += [(odd_commands, (host, port))]
        if tick % 5 == 0:
            jobs.append((broken_handshake, (host, port)))
        if args.burst and tick % 10 == 0:
            jobs.append((burst, (host, port, args.burst, args.burst_from)))
        for job, job_args in jobs:
            try:
                job(*job_args)
            except (OSError, smtplib.SMTPException) as e:
                errors[f"{job.__name__}: {type(e).__name__} {e}"[:160]] += 1
        tick += 1
        time.sleep(max(0.0, 1 - (time.monotonic() - t)))
    print(f"mix: {tick} rounds, {sum(errors.values())} sessions ended in an error")
    for what, n in errors.most_common():
        print(f"  {n} x {what}")


if __name__ == "__main__":
    main()
