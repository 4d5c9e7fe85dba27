#!/usr/bin/env bash
# tls_side_by_side.sh - mailhop and Postfix under the same STARTTLS load, in the same run.
#
# Usage: benches/tls_side_by_side.sh            (from the repository, as root: Postfix needs it)
#
# What it does:
#   - writes a self-signed ECDSA P-256 and an RSA-2048 certificate for localhost into a
#     temporary directory;
#   - starts two smtp-sinks (the shared kit's sink.sh), a release mailhop on 127.0.0.1:10035
#     relaying to the first, and a private Postfix (the shared kit's postfix_setup.sh, default
#     settings) on 127.0.0.1:10025 relaying to the second, with smtpd_tls_security_level = may,
#     the RSA certificate in smtpd_tls_cert_file/key_file and mailhop's ECDSA certificate in
#     smtpd_tls_eccert_file/eckey_file (the load's rustls client prefers ECDSA, so both servers
#     sign with the same key type; Postfix's log line below shows which it used);
#   - for ROUNDS rounds, alternating which server goes first, runs the load harness in --target
#     mode with --starttls at c=10 and c=100, one new connection per message and connections
#     reused, with --server-pid-tree on the server (Postfix: its master and every child, so
#     smtpd, cleanup, qmgr, smtp and tlsmgr all count; mailhop: its one process); after each
#     run it waits (bounded) until the server's sink has every accepted message, so no backlog
#     spills into the next run;
#   - prints a table of medians over the rounds, and keeps every JSON line (with "relay" and
#     "round" added) in OUT/results.jsonl, the commands in OUT/commands.txt.
#
# Env (all optional):
#   MAILHOP=path        release mailhop (default $CARGO_TARGET_DIR/release/mailhop or target/release/mailhop)
#   LOAD=path           the load harness binary (default: built with `cargo bench --bench load --no-run`)
#   PERF=dir            the shared kit (default ../shared/perf beside the repository, or /work/shared/perf)
#   ROUNDS=3  CONCS="10 100"  MSGS_NEW=2000  MSGS_REUSE=4000  SIZE=1024  RESUMPTION=on
#   CERT_TYPE=ecdsa     or rsa: the certificate mailhop gets (Postfix always has both)
#   MAX_TIME=120        bound of each load run (seconds)
#   OUT=dir             where results go (default a new /tmp/tls-side-by-side.XXXXXX)
#
# Loopback only. Everything it starts it stops on exit (mailhop by PID, Postfix with
# postfix_stop.sh --purge, the sinks with sink.sh stop); Postfix's watchdog stops it after an hour
# whatever happens.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
if [[ -z ${PERF:-} ]]; then
  for d in "$REPO/../shared/perf" /work/shared/perf; do [[ -d $d ]] && PERF=$(cd "$d" && pwd) && break; done
fi
[[ -d ${PERF:-} ]] || { echo "no shared perf kit; set PERF" >&2; exit 1; }
ROUNDS=${ROUNDS:-3}
CONCS=${CONCS:-10 100}
MSGS_NEW=${MSGS_NEW:-2000}
MSGS_REUSE=${MSGS_REUSE:-4000}
SIZE=${SIZE:-1024}
RESUMPTION=${RESUMPTION:-on}
CERT_TYPE=${CERT_TYPE:-ecdsa}
MAX_TIME=${MAX_TIME:-120}
MH_PORT=10035 MH_SINK=10036 PF_PORT=10025 PF_SINK=10026
CONF_DIR=${CONF_DIR:-/etc/postfix-perf}
QUEUE_DIR=${QUEUE_DIR:-/var/spool/postfix-perf}
export CONF_DIR QUEUE_DIR

for tool in postfix postconf smtp-sink openssl python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (Debian: apt-get install postfix openssl python3)" >&2; exit 1; }
done
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
MAILHOP=${MAILHOP:-$TARGET_DIR/release/mailhop}
[[ -x $MAILHOP ]] || { echo "no mailhop at $MAILHOP; cargo build --release first" >&2; exit 1; }
if [[ -z ${LOAD:-} ]]; then
  LOAD=$(cd "$REPO" && cargo bench --bench load --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -n1)
  [[ $LOAD = /* ]] || LOAD="$REPO/$LOAD"
fi
[[ -x $LOAD ]] || { echo "no load harness binary ($LOAD)" >&2; exit 1; }

OUT=${OUT:-$(mktemp -d /tmp/tls-side-by-side.XXXXXX)}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: > "$RESULTS"

# --- certificates -------------------------------------------------------------------------
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$OUT/ecdsa.key" -out "$OUT/ecdsa.pem" 2>/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
  -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$OUT/rsa.key" -out "$OUT/rsa.pem" 2>/dev/null
chmod 644 "$OUT"/*.key "$OUT"/*.pem  # Postfix reads them as root; mailhop as whoever runs this

# --- servers ------------------------------------------------------------------------------
MH_PID=
cleanup() {
  set +e
  [[ -n $MH_PID ]] && kill "$MH_PID" 2>/dev/null && wait "$MH_PID" 2>/dev/null
  "$PERF/postfix_stop.sh" --purge >/dev/null 2>&1
  "$PERF/sink.sh" stop $MH_SINK >/dev/null 2>&1
  "$PERF/sink.sh" stop $PF_SINK >/dev/null 2>&1
}
trap cleanup EXIT

"$PERF/sink.sh" $MH_SINK 3600 >/dev/null
"$PERF/sink.sh" $PF_SINK 3600 >/dev/null

cat > "$OUT/mailhop.toml" <<EOF
hostname = "relay.example.test"
listen = ["127.0.0.1:$MH_PORT"]
queue = "$OUT/mailhop.db"
maildir = "$OUT/mail"
max_connections_per_ip = 20000
[routes]
"*" = "127.0.0.1:$MH_SINK"
[tls]
cert = "$OUT/$CERT_TYPE.pem"
key = "$OUT/$CERT_TYPE.key"
EOF
"$MAILHOP" serve --config "$OUT/mailhop.toml" 2> "$OUT/mailhop.log" &
MH_PID=$!

"$PERF/postfix_setup.sh" 127.0.0.1:$PF_PORT 127.0.0.1:$PF_SINK > "$OUT/postfix_setup.log"
postconf -c "$CONF_DIR" -e \
  "smtpd_tls_security_level = may" \
  "smtpd_tls_cert_file = $OUT/rsa.pem" "smtpd_tls_key_file = $OUT/rsa.key" \
  "smtpd_tls_eccert_file = $OUT/ecdsa.pem" "smtpd_tls_eckey_file = $OUT/ecdsa.key" \
  "smtpd_tls_loglevel = 1"
postfix -c "$CONF_DIR" reload >/dev/null 2>&1
sleep 1
PF_PID=$(tr -d ' ' < "$QUEUE_DIR/pid/master.pid")

for port in $MH_PORT $PF_PORT; do
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
done
kill -0 "$MH_PID" || { echo "mailhop did not start:"; tail "$OUT/mailhop.log"; exit 1; }

echo "mailhop $MAILHOP (pid $MH_PID, $CERT_TYPE certificate) on :$MH_PORT -> smtp-sink :$MH_SINK"
echo "Postfix $(postconf -c "$CONF_DIR" -h mail_version) (master pid $PF_PID) on :$PF_PORT -> smtp-sink :$PF_SINK"
echo "load $LOAD"
echo "results in $OUT"

# --- runs ---------------------------------------------------------------------------------
# run SERVER CONC REUSE(0|1) ROUND
run() {
  local server=$1 conc=$2 reuse=$3 round=$4 port pid sink msgs before
  if [[ $server == mailhop ]]; then port=$MH_PORT pid=$MH_PID sink=$MH_SINK; else port=$PF_PORT pid=$PF_PID sink=$PF_SINK; fi
  msgs=$MSGS_NEW; args=()
  if [[ $reuse == 1 ]]; then msgs=$MSGS_REUSE; args=(--reuse); fi
  before=$("$PERF/sink.sh" count $sink)
  local cmd=("$LOAD" --target 127.0.0.1:$port --starttls --resumption "$RESUMPTION" --connections "$conc"
             --messages "$msgs" --size "$SIZE" "${args[@]}" --server-pid-tree "$pid" --max-time "$MAX_TIME" --json)
  echo "round $round: ${cmd[*]}" >> "$OUT/commands.txt"
  local line
  line=$("${cmd[@]}")
  local accepted
  accepted=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["accepted"])' "$line")
  # bounded wait for the server to hand every accepted message to its sink
  local want=$((before + accepted)) deadline=$(( $(date +%s) + 120 ))
  while [[ $("$PERF/sink.sh" count $sink) -lt $want && $(date +%s) -lt $deadline ]]; do sleep 0.2; done
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); d.update(relay=sys.argv[2], round=int(sys.argv[3]), drained=int(sys.argv[4])>=int(sys.argv[5])); print(json.dumps(d))' \
    "$line" "$server" "$round" "$("$PERF/sink.sh" count $sink)" "$want" >> "$RESULTS"
  printf '  round %s %-8s c=%-3s reuse=%s: %s msg/s\n' "$round" "$server" "$conc" "$reuse" \
    "$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["accepted_per_s"])' "$line")"
}

for round in $(seq 1 "$ROUNDS"); do
  if (( round % 2 )); then order="mailhop postfix"; else order="postfix mailhop"; fi
  for conc in $CONCS; do
    for reuse in 0 1; do
      for server in $order; do run "$server" "$conc" "$reuse" "$round"; done
    done
  done
done

echo
echo "Postfix, first TLS session: $(grep -m1 -o 'TLS connection established from .*' "${LOG_FILE:-/var/log/postfix-perf.log}" 2>/dev/null || echo '?')"

# --- medians ------------------------------------------------------------------------------
python3 - "$RESULTS" "$SIZE" "$RESUMPTION" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def f(x, fmt="{:,.0f}"):
    return "-" if x is None else fmt.format(x)
print(f"\nSTARTTLS, {sys.argv[2]} B messages, resumption {sys.argv[3]}; medians of {len({r['round'] for r in rows})} rounds")
print("| load | server | msg/s | handshakes/s (resumed) | handshake p50 / p99 ms | end of data p50 / p99 ms | server CPU us/msg | peak PSS (RSS) MiB | errors |")
print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
keys = sorted({(r["connections"], r["reuse"]) for r in rows}, key=lambda k: (k[1], k[0]))
for conc, reuse in keys:
    per = {}
    for server in ("mailhop", "postfix"):
        rs = [r for r in rows if r["relay"] == server and r["connections"] == conc and r["reuse"] == reuse]
        if not rs:
            continue
        t = lambda k: med([r["tls"][k] for r in rs])
        hs = lambda k: med([r["tls"]["handshake_ms"][k] for r in rs])
        lat = lambda k: med([r["latency_ms"][k] for r in rs])
        resumed = med([r["tls"]["resumed"] / max(r["tls"]["handshakes"], 1) * 100 for r in rs])
        rss = med([(r["server"]["peak_rss_bytes"] or 0) / 2**20 for r in rs])
        pss = med([(r["server"].get("peak_pss_bytes") or 0) / 2**20 for r in rs])
        hs_rate = f"{f(t('handshakes_per_s'))} ({f(resumed, '{:.0f}')}%)" if not reuse else f"({rs[0]['tls']['handshakes']} in all)"
        per[server] = med([r["accepted_per_s"] for r in rs])
        load = f"c={conc}, {'reused' if reuse else 'new connection per message'}, {rs[0]['messages']} msgs"
        name = "Postfix" if server == "postfix" else "mailhop"
        print(f"| {load} | {name} | {f(per[server])} | {hs_rate} "
              f"| {f(hs('p50'), '{:.2f}')} / {f(hs('p99'), '{:.2f}')} | {f(lat('p50'), '{:.2f}')} / {f(lat('p99'), '{:.2f}')} "
              f"| {f(med([r['server']['cpu_us_per_accepted'] for r in rs]))} | {f(pss, '{:.1f}')} ({f(rss, '{:.0f}')}) "
              f"| {sum(r['errors'] for r in rs)}{'' if all(r['drained'] for r in rs) else ' (not drained)'} |")
    if len(per) == 2 and per["postfix"]:
        print(f"| | mailhop / Postfix | {per['mailhop'] / per['postfix']:.1f}x | | | | | | |")
EOF
