#!/usr/bin/env bash
# Screenshots the mailhop dashboard (mailhop.json) drawn from real data:
# a private Prometheus scrapes a real mailhop while load runs through it.
#
#   contrib/grafana/capture.sh target/release/mailhop   writes contrib/grafana/dashboard.png
#   contrib/grafana/capture.sh --fake                   the same against render/fake_exporter.py
#                                                        (a development aid), writes render/preview-fake.png
# Environment:
#   OUT=FILE      where the PNG goes
#   WAVE=60       seconds per load wave (three waves, plus pauses: about 4 minutes in all)
#   RATE=20s      what $__rate_interval becomes in the picture
#   NO_METRICS=1  for a mailhop without metrics: no [metrics] section, no waiting for
#                 /metrics (a trial of the load; the panels say No data); writes render/preview-nometrics.png
#   KEEP=1        keep the temporary folder (configs, logs, queue, Prometheus data)
#
# Everything listens on 127.0.0.1 only: mailhop 2525 and 9325 (metrics), sinks 2526-2529,
# a closed port 2599 for an unreachable next hop, dnsmasq 2553 (when installed);
# Prometheus 9090 or a free port. Every process started here is stopped by PID on exit.
# Needs: prometheus, chromium, node + npm, python3, smtp-source and smtp-sink (postfix),
# openssl; dnsmasq (dnsmasq-base) is optional. See README.md.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
RENDER=$HERE/render
WAVE=${WAVE:-60}
RATE=${RATE:-20s}
MODE=real
case "${1:-}" in
  --fake) MODE=fake; OUT=${OUT:-$RENDER/preview-fake.png} ;;
  "" | -h | --help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  *) MAILHOP=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
     [ -x "$MAILHOP" ] || { echo "capture: $1 is not an executable mailhop binary" >&2; exit 2; }
     if [ -n "${NO_METRICS:-}" ]; then OUT=${OUT:-$RENDER/preview-nometrics.png}; fi
     OUT=${OUT:-$HERE/dashboard.png} ;;
esac
case "$OUT" in /*) ;; *) OUT=$PWD/$OUT ;; esac

say() { echo "capture: $*" >&2; }
die() { say "$*"; exit 1; }

missing=()
for cmd in prometheus node npm python3 openssl; do command -v $cmd >/dev/null || missing+=("$cmd"); done
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || missing+=(chromium)
if [ $MODE = real ]; then
  for cmd in smtp-source smtp-sink; do command -v $cmd >/dev/null || missing+=("$cmd"); done
fi
[ $MODE = fake ] && ! python3 -c 'import prometheus_client' 2>/dev/null && missing+=(prometheus_client)
if [ ${#missing[@]} -gt 0 ]; then
  die "missing: ${missing[*]}
  apt-get install -y prometheus chromium nodejs npm postfix openssl dnsmasq-base   (postfix: smtp-source, smtp-sink)
  pip install prometheus_client   (only for --fake)"
fi
if [ ! -f "$RENDER/node_modules/uplot/dist/uPlot.iife.min.js" ] || [ ! -d "$RENDER/node_modules/playwright-core" ]; then
  say "installing the renderer's npm packages (uplot, playwright-core) into render/node_modules"
  (cd "$RENDER" && npm ci --no-audit --no-fund >/dev/null)
fi

TMP=$(mktemp -d "${TMPDIR:-/tmp}/mailhop-capture.XXXXXX")
PIDS=()
cleanup() {
  local rc=$? pid
  for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do kill "${PIDS[i]}" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  if [ -n "${KEEP:-}" ] || [ $rc -ne 0 ]; then say "logs and data kept in $TMP"; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background, output in $TMP/NAME.log, PID remembered.
start() { local name=$1; shift; "$@" >"$TMP/$name.log" 2>&1 & PIDS+=($!); }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_port() {  # PORT SECONDS NAME [HINT]: NAME is the last process started
  local end=$((SECONDS + $2)) pid=${PIDS[-1]}
  until listening "$1"; do
    kill -0 "$pid" 2>/dev/null || die "$3 exited before it listened on 127.0.0.1:$1${4:+ ($4)}; its log:
$(tail -5 "$TMP/$3.log")"
    [ $SECONDS -lt $end ] || die "$3 did not listen on 127.0.0.1:$1 within $2 s; its log:
$(tail -5 "$TMP/$3.log")"
    sleep 0.2
  done
}
wait_http() {  # URL SECONDS WHAT
  local end=$((SECONDS + $2))
  until python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$1" 2>/dev/null; do
    [ $SECONDS -lt $end ] || return 1
    sleep 0.5
  done
}
promql() {  # EXPR: prints the first value of an instant query, or nothing
  python3 - "$PROM" "$1" <<'PY'
import json, sys, urllib.parse, urllib.request
url = f"{sys.argv[1]}/api/v1/query?query={urllib.parse.quote(sys.argv[2])}"
r = json.load(urllib.request.urlopen(url, timeout=5))["data"]["result"]
print(r[0]["value"][1] if r else "")
PY
}

FIXED=(2525 9325)
[ $MODE = real ] && FIXED+=(2526 2527 2528 2529 2553 2599)
for p in "${FIXED[@]}"; do listening "$p" && die "127.0.0.1:$p is in use; this capture needs ports ${FIXED[*]} free"; done
PROM_PORT=9090
listening $PROM_PORT && PROM_PORT=$(free_port)
PROM=http://127.0.0.1:$PROM_PORT

# ---- the metrics source: a real mailhop with its sinks, or the stand-in ----
if [ $MODE = fake ]; then
  start fake_exporter python3 "$RENDER/fake_exporter.py" --listen 127.0.0.1:9325
  wait_port 9325 20 fake_exporter
else
  mkdir -p "$TMP/mail"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=relay.capture.example \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
  PASSWORD=capture-$RANDOM$RANDOM
  echo "$PASSWORD" | "$MAILHOP" passwd capture >"$TMP/users" || die "$MAILHOP passwd failed"
  as_user=(); [ "$(id -u)" = 0 ] && as_user=(-u nobody)  # smtp-sink refuses to run as root
  start sink smtp-sink "${as_user[@]}" 127.0.0.1:2526 1000
  wait_port 2526 10 sink
  start sink_defer smtp-sink "${as_user[@]}" -r RCPT 127.0.0.1:2528 100
  wait_port 2528 10 sink_defer
  start sink_bounce smtp-sink "${as_user[@]}" -f RCPT -B "550 5.1.1 No such user" 127.0.0.1:2529 100
  wait_port 2529 10 sink_bounce
  start sink_tls python3 "$HERE/load/tls_sink.py" --listen 127.0.0.1:2527 --cert "$TMP/cert.pem" --key "$TMP/key.pem"
  wait_port 2527 10 sink_tls
  DNSMASQ=$(command -v dnsmasq || ls /usr/sbin/dnsmasq 2>/dev/null || true)
  if [ -n "$DNSMASQ" ]; then
    as_root=(); [ "$(id -u)" = 0 ] && as_root=(--user=root)
    start dnsmasq "$DNSMASQ" --keep-in-foreground --no-resolv --no-hosts --bind-interfaces \
      --listen-address=127.0.0.1 --port=2553 --pid-file= "${as_root[@]}" \
      --local=/dns.example/ --host-record=sink.dns.example,127.0.0.1
  else
    say "dnsmasq not installed: the DNS-routed domains will only show DNS errors"
  fi
  cat >"$TMP/mailhop.toml" <<EOF
hostname = "relay.capture.example"
listen = ["127.0.0.1:2525"]
queue = "queue.db"
max_connections_per_ip = 400                # mix.py --burst 500 from 127.0.0.3 goes past it
relay_networks = ["127.0.0.0/8"]
local_domains = ["capture.example"]
local_users = ["postmaster"]
maildir = "mail"

[routes]
"*" = "127.0.0.1:2526"                  # smtp-sink: accepts everything
"tls.example" = "127.0.0.1:2527"        # load/tls_sink.py: STARTTLS
"defer.example" = "127.0.0.1:2528"      # smtp-sink -r RCPT: 450, deferred until expired
"bounce.example" = "127.0.0.1:2529"     # smtp-sink -f RCPT: 550, bounced
"down.example" = "127.0.0.1:2599"       # nothing listens: connection refused, deferred
"dns.example" = "sink.dns.example:2526" # A/AAAA lookup at dnsmasq
"nx.example" = "missing.dns.example:2526"  # NXDOMAIN

[retry]
schedule = ["10s", "20s", "30s"]
max_lifetime = "90s"
delay_warning = "0s"

[timeouts]
connect = "5s"

[dns]
servers = ["127.0.0.1:2553"]

[tls]
cert = "cert.pem"
key = "key.pem"

[auth]
users_file = "users"
EOF
  if [ -z "${NO_METRICS:-}" ]; then
    printf '\n[metrics]\nlisten = "127.0.0.1:9325"\n' >>"$TMP/mailhop.toml"
  fi
  start mailhop "$MAILHOP" serve --config "$TMP/mailhop.toml"
  wait_port 2525 20 mailhop "a build that does not know [metrics] yet? NO_METRICS=1 tries the load alone"
fi
if [ -z "${NO_METRICS:-}" ]; then
  wait_http http://127.0.0.1:9325/metrics 20 ||
    die "no metrics at http://127.0.0.1:9325/metrics within 20 s (a mailhop without the [metrics] section?); log: $(tail -5 "$TMP"/mailhop.log 2>/dev/null)"
fi

# ---- Prometheus: scrapes 127.0.0.1:9325 every 2 s, data in the temporary folder ----
cat >"$TMP/prometheus.yml" <<EOF
global: {scrape_interval: 2s, evaluation_interval: 2s}
scrape_configs:
  - job_name: mailhop
    static_configs: [{targets: ["127.0.0.1:9325"]}]
EOF
start prometheus prometheus --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/prometheus" \
  --web.listen-address=127.0.0.1:$PROM_PORT --storage.tsdb.retention.time=1d
wait_http "$PROM/-/ready" 30 || die "Prometheus was not ready within 30 s: $(tail -3 "$TMP/prometheus.log")"
if [ -z "${NO_METRICS:-}" ]; then
  for _ in $(seq 40); do [ "$(promql 'up{job="mailhop"}')" = 1 ] && break; sleep 0.5; done
  [ "$(promql 'up{job="mailhop"}')" = 1 ] || die "Prometheus could not scrape 127.0.0.1:9325: see $TMP/prometheus.log"
fi
T0=$(date +%s)
say "Prometheus on $PROM${NO_METRICS:+ (nothing to scrape: NO_METRICS)}; temporary folder $TMP"

# ---- load, in waves, each bounded by count and by time ----
source_() {  # NAME SECONDS smtp-source args...: one bounded smtp-source in the background
  local name=$1 secs=$2; shift 2
  start "$name" timeout "$secs" smtp-source -M load.example -f a@src.example "$@" 127.0.0.1:2525
}
pause() { say "$1"; sleep "$2"; }
finish_wave() {  # waits for the wave's load processes (each bounded by timeout), forgets their PIDs
  local pid
  for pid in "${WAVE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  PIDS=("${PIDS[@]:0:$FIRST}")
}
wave() {  # LABEL: marks where the wave's processes start
  say "$1 (${WAVE} s)"; FIRST=${#PIDS[@]}
}
wave_pids() { WAVE_PIDS=("${PIDS[@]:$FIRST}"); }

if [ $MODE = fake ]; then
  pause "the stand-in runs for $((3 * WAVE + 60)) s" $((3 * WAVE + 60))
else
  mix() { start "mix_$1" timeout $((WAVE + 30)) python3 "$HERE/load/mix.py" --server 127.0.0.1:2525 \
            --seconds "$WAVE" --password "$PASSWORD" "${@:2}"; }
  pause "a quiet start" 10
  wave "wave 1: a steady 100 messages/s, some over TLS with AUTH"
  source_ w1_main "$WAVE" -d -s 100 -w 1 -m $((100 * WAVE)) -l 2048 -t x@dst.example
  source_ w1_defer "$WAVE" -d -s 1 -w 2 -m "$WAVE" -t y@defer.example
  mix w1 --tls-per-second 2 --fail-per-second 0
  wave_pids; finish_wave
  pause "a pause" 10
  wave "wave 2: 300 messages/s with a burst of 10000 as fast as they go, failing next hops, AUTH guessing, connection bursts"
  source_ w2_main "$WAVE" -d -s 300 -w 1 -m $((300 * WAVE)) -l 1024 -t x@dst.example
  source_ w2_defer "$WAVE" -d -s 5 -w 1 -m $((5 * WAVE)) -t y@defer.example
  source_ w2_bounce "$WAVE" -d -s 5 -w 1 -m $((5 * WAVE)) -t z@bounce.example
  source_ w2_down "$WAVE" -d -s 2 -w 1 -m $((2 * WAVE)) -t w@down.example
  mix w2 --tls-per-second 1 --fail-per-second 4 --burst 500
  sleep $((WAVE / 2))
  source_ w2_burst $((WAVE / 2)) -d -s 20 -m 10000 -l 1024 -t x@dst.example
  wave_pids; finish_wave
  pause "a pause" 10
  wave "wave 3: 200 messages/s of 20 kB, the TLS next hop, DNS-routed domains, an unknown local user"
  source_ w3_main "$WAVE" -d -s 200 -w 1 -m $((200 * WAVE)) -l 20000 -t x@dst.example
  source_ w3_tls "$WAVE" -d -s 5 -w 1 -m $((5 * WAVE)) -t t@tls.example
  source_ w3_dns "$WAVE" -d -s 5 -w 1 -m $((5 * WAVE)) -t d@dns.example
  source_ w3_nx "$WAVE" -d -s 1 -w 2 -m "$WAVE" -t n@nx.example
  source_ w3_local "$WAVE" -A -s 1 -w 2 -m "$WAVE" -t nobody@capture.example  # 550 5.1.1
  mix w3 --tls-per-second 2 --fail-per-second 1
  wave_pids; finish_wave
  pause "the queue drains, deferred mail expires" 30
  say "accepted $(promql 'sum(mailhop_messages_accepted_total)' || true) messages" \
      "$(sqlite3 "$TMP/queue.db" 'SELECT status, count(*) FROM deliveries GROUP BY status' 2>/dev/null | tr '\n' ' ' || true)"
fi

# ---- draw and screenshot ----
END=$(date +%s)
if [ -z "${NO_METRICS:-}" ]; then  # a metric the dashboard asks for and the scrape never had?
  python3 - "$HERE/mailhop.json" "$PROM" <<'PY'
import json, re, sys, urllib.request
dash = json.load(open(sys.argv[1]))
names = json.load(urllib.request.urlopen(sys.argv[2] + "/api/v1/label/__name__/values", timeout=5))["data"]
used = {m for p in dash["panels"] for t in p.get("targets", []) for m in re.findall(r"\bmailhop_\w+", t["expr"])}
if used - set(names):
    print("capture: warning: the dashboard queries metrics the scrape never had:",
          ", ".join(sorted(used - set(names))), file=sys.stderr)
PY
fi
RENDER_PORT=$(free_port)
start render python3 "$RENDER/serve.py" --listen 127.0.0.1:$RENDER_PORT --prometheus "$PROM"
wait_port "$RENDER_PORT" 10 render
URL="http://127.0.0.1:$RENDER_PORT/?range=$((END - T0 + 10))s&end=$END&rate=$RATE"
[ $MODE = fake ] && URL="$URL&note=synthetic%20data%20from%20fake_exporter.py,%20not%20mailhop"
mkdir -p "$(dirname "$OUT")"
node "$RENDER/shot.mjs" "$URL" "$OUT" || die "the screenshot failed (panel errors above)"
say "wrote $OUT"
