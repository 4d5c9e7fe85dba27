#!/usr/bin/env python3
"""DEVELOPMENT AID ONLY: a stand-in for mailhop's /metrics with synthetic values.

It exposes the metric names mailhop's metrics endpoint uses, with made-up
numbers that move in waves, so the dashboard and its renderer can be worked on
before (or without) a real mailhop. Nothing it shows is a measurement: the
committed dashboard.png comes from capture.sh against a real mailhop.

    pip install prometheus_client
    python3 fake_exporter.py [--listen 127.0.0.1:9325]
"""
import argparse
import math
import os
import random
import time

os.environ.setdefault("PROMETHEUS_DISABLE_CREATED_SERIES", "True")
from prometheus_client import (REGISTRY, Counter, Gauge,  # noqa: E402
                               Histogram, start_http_server)


M = "mailhop_"
inbound = Counter(M + "inbound_connections", "Inbound connections accepted")
inbound_open = Gauge(M + "inbound_sessions", "Inbound sessions open")
refused = Counter(M + "inbound_refused", "Inbound connections refused", ["reason"])
replies = Counter(M + "smtp_replies", "SMTP replies sent", ["command", "class"])
msgs = Counter(M + "messages_accepted", "Messages accepted")
rcpts_in = Counter(M + "recipients_accepted", "Recipients accepted")
rx_bytes = Counter(M + "received_bytes", "Message bytes received")
tls = Counter(M + "tls_handshakes", "TLS handshakes", ["direction"])
tls_fail = Counter(M + "tls_handshake_failures", "TLS handshake failures", ["direction"])
auth = Counter(M + "auth", "AUTH attempts", ["result"])
out_conn = Counter(M + "outbound_connections", "Outbound connects", ["result"])
out_open = Gauge(M + "outbound_sessions", "Outbound sessions open")
out_tx = Counter(M + "outbound_transactions", "Outbound transactions")
attempts = Counter(M + "delivery_attempts", "Delivery attempts", ["next_hop"])
rcpts = Counter(M + "recipients", "Recipient outcomes", ["next_hop", "outcome"])
queue = Gauge(M + "queue_recipients", "Pending recipients", ["status"])
oldest = Gauge(M + "queue_oldest_pending_age_seconds", "Oldest pending recipient age")
commit = Histogram(M + "commit_duration_seconds", "Group commit duration",
                   buckets=[.0005, .001, .002, .005, .01, .02, .05, .1, .25, .5, 1])
batch = Histogram(M + "commit_batch_size", "Messages per group commit",
                  buckets=[1, 2, 4, 8, 16, 32, 64, 128, 256])
turn = Histogram(M + "loop_turn_duration_seconds", "Loop turn duration",
                 buckets=[.0001, .0005, .001, .002, .005, .01, .02, .05, .1])
dns = Counter(M + "dns_queries", "DNS queries", ["type"])
dns_err = Counter(M + "dns_errors", "DNS errors")
dns_hit = Counter(M + "dns_cache_hits", "DNS cache hits")
reloads = Counter(M + "config_reloads", "Config reloads", ["result"])
build = Gauge(M + "build_info", "Build", ["version"])

# next hop: (share of the mail, probability a recipient is deferred, bounced)
HOPS = {"127.0.0.1:2526": (0.55, 0.00, 0.00), "mx.example.net": (0.2, 0.03, 0.01),
        "example.org": (0.15, 0.08, 0.02), "slow.example:25": (0.07, 0.5, 0.0),
        "down.example:25": (0.03, 1.0, 0.0)}


def load(t):
    """Messages per second at second t: waves with a burst every few minutes."""
    base = 40 + 30 * math.sin(t / 45) + 15 * math.sin(t / 11)
    burst = 150 if (t % 240) < 25 else 0
    return max(0.0, base + burst + random.gauss(0, 5))


def tick(t, q):
    n = load(t)
    conns = n / 3
    inbound.inc(conns)
    inbound_open.set(max(0, conns * 0.8 + random.gauss(0, 2)))
    if n > 150:
        refused.labels("max_connections_per_ip").inc((n - 150) / 20)
    if random.random() < 0.05:
        refused.labels("accept_error").inc()
    for cmd, k, cls in [("greeting", conns, "2xx"), ("EHLO", conns, "2xx"),
                        ("MAIL", n, "2xx"), ("RCPT", 1.3 * n, "2xx"), ("RCPT", 0.02 * n, "5xx"),
                        ("RCPT", 0.01 * n, "4xx"), ("DATA", n, "3xx"),
                        ("data_end", n, "2xx"), ("QUIT", conns, "2xx")]:
        replies.labels(cmd, cls).inc(k)
    msgs.inc(n)
    rcpts_in.inc(1.3 * n)
    rx_bytes.inc(n * random.uniform(4000, 12000))
    tls.labels("inbound").inc(conns * 0.4)
    tls.labels("outbound").inc(conns * 0.2)
    if random.random() < 0.1:
        tls_fail.labels("inbound").inc()
    auth.labels("success").inc(conns * 0.1)
    auth.labels("failure").inc(max(0, random.gauss(0.3, 0.4)) + (3 if 120 < t % 300 < 160 else 0))
    out_conn.labels("connected").inc(n / 10)
    out_conn.labels("failed").inc(0.5 + random.random())
    out_open.set(12 + n / 8 + random.gauss(0, 1))
    out_tx.inc(n * 1.1)
    deferred = 0.0
    for hop, (share, p_def, p_bounce) in HOPS.items():
        k = 1.3 * n * share
        attempts.labels(hop).inc(k)
        # like mailhop, a label set appears with its first increment
        for outcome, p in (("deferred", p_def), ("bounced", p_bounce),
                           ("delivered", 1 - p_def - p_bounce)):
            if p > 0:
                rcpts.labels(hop, outcome).inc(k * p)
        deferred += k * p_def
    rcpts.labels("down.example:25", "expired").inc(0.2 * random.random())
    q["queued"] = max(0.0, q["queued"] * 0.6 + n * random.uniform(0.2, 0.6))
    q["active"] = n * 0.4 + random.gauss(0, 3)
    q["deferred"] = min(4000.0, q["deferred"] + deferred * 0.05 - 0.5)
    q["held"] = 3
    for status, v in q.items():
        queue.labels(status).set(max(0, round(v)))
    oldest.set(300 + t % 1800)
    commits = max(1, int(min(n, 400) / 4))
    per = n / commits
    for _ in range(commits):
        batch.observe(max(1, random.gauss(per, per / 3)))
        commit.observe(random.lognormvariate(math.log(0.002 + n / 200000), 0.5))
    for _ in range(200):
        turn.observe(random.lognormvariate(math.log(0.0002 + n / 500000), 0.8))
    a = n * 0.05
    dns.labels("MX").inc(a)
    dns.labels("A").inc(a * 1.5)
    dns.labels("AAAA").inc(a * 1.5)
    dns.labels("TXT").inc(a * 0.1)
    dns_hit.inc(n * 0.4)
    dns_err.inc(a * 0.05)
    if random.random() < 0.01:
        reloads.labels("ok").inc()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--listen", default="127.0.0.1:9325")
    args = ap.parse_args()
    host, port = args.listen.rsplit(":", 1)
    start_http_server(int(port), addr=host, registry=REGISTRY)
    build.labels("0.0.0-fake").set(1)
    reloads.labels("failed")
    q = {"queued": 0.0, "active": 0.0, "deferred": 50.0, "held": 3.0}
    t0 = time.monotonic()
    while True:
        tick(time.monotonic() - t0, q)
        time.sleep(1)


if __name__ == "__main__":
    main()
