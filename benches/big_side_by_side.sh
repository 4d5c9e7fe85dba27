#!/usr/bin/env bash
# big_side_by_side.sh - mailhop beside Postfix and smtp-sink with large bodies (1 MiB, 10 MiB),
# and a no-regression check for 1 KiB mail, new mailhop against the old (pre-streaming) build.
#
# Usage: benches/big_side_by_side.sh            (from the repository, as root: Postfix needs it)
#
# What it does (everything on loopback):
#   - starts smtp-sinks (the shared kit's sink.sh): one that is itself a target (stores nothing),
#     and one behind each relay; the new mailhop (:10041 -> sink :10042), the old mailhop
#     (:10043 -> sink :10044) and a private Postfix (postfix_setup.sh in its own CONF_DIR, so it
#     does not disturb a /etc/postfix-perf instance; :10045 -> sink :10046, default settings but
#     message_size_limit = 20971520);
#   - BIG=1: for ROUNDS rounds, rotating which server goes first, runs the load harness
#     (--target, c=BIG_CONC, --reuse, --server-pid-tree) with 1 MiB x 200 and 10 MiB x 50 against
#     smtp-sink, Postfix, new mailhop and (OLD_BIG=1) old mailhop; after each relay run it waits
#     (bounded, 5 ms polling) until the relay's sink has every accepted message: end-to-end time
#     = the harness's elapsed + the wait after it exits. Server CPU is taken over the whole run
#     including the drain (utime+stime+cutime+cstime of the process tree, so Postfix's smtpd,
#     cleanup, qmgr and smtp all count); peak RSS/PSS from the harness (sampled during the load)
#     and from the drain too;
#   - SMALL=1: for ROUNDS rounds, rotating old mailhop, new mailhop and smtp-sink, 1 KiB messages
#     with smtp-source (the kit's accept_rate.sh / e2e_rate.sh way): accept c=100 reused
#     SMALL_REUSE msgs, accept c=100 new connection per message SMALL_NEW msgs, and (mailhops only)
#     end to end c=100 reused SMALL_REUSE msgs; after each mailhop accept run it waits for the
#     sink so no backlog spills into the next run;
#   - MEMORY=1: the memory promise on fresh mailhops: 1,000 concurrent sessions each sending one
#     10 MiB message to the new mailhop (VmHWM, the harness's sampled peak, time taken, RSS before
#     and 10 s after the load); then 10,000 idle sessions (the kit's idle_conns.py --hold 5)
#     against a fresh new and a fresh old mailhop, ROUNDS times alternating: RSS while open,
#     kB per session over idle. Its queue goes to MEM_DIR (needs > 25 GB free; deleted after).
#   - prints tables of medians; every JSON line (with "relay", "round", "bench" added) is kept in
#     OUT/results.jsonl, the commands in OUT/commands.txt.
#
# Env (all optional):
#   MAILHOP=path        new mailhop (default $CARGO_TARGET_DIR/release/mailhop or target/release/mailhop)
#   OLD_MAILHOP=path    the build to compare with (default /work/bins/old/mailhop)
#   LOAD=path           the load harness binary (default: built with `cargo bench --bench load --no-run`)
#   PERF=dir            the shared kit (default ../shared/perf beside the repository, or /work/shared/perf)
#   ROUNDS=3  BIG=1  SMALL=1  MEMORY=0  OLD_BIG=1
#   BIG_CONC=10  BIG_RUNS="1M:200 10M:50"
#   SMALL_CONC=100  SMALL_REUSE=20000  SMALL_NEW=10000  SMALL_SIZE=1024
#   MEM_CONNS=1000  MEM_SIZE=10M  IDLE=10000  MEM_DIR=/var/tmp
#   MAX_TIME=300        bound of each load run (seconds); DRAIN_MAX=300 bound of each drain wait
#   QUIET_CPU=0.15 QUIET_WAIT=180  before each run, wait (at most QUIET_WAIT s) until processes
#                       outside the benchmark use < QUIET_CPU cores (a build running beside it on a
#                       2-core box halves any figure); the CPU they used during each run is kept
#                       ("foreign") and runs where it exceeded 0.1 core are listed at the end
#   OUT=dir             where results go (default a new /tmp/big-side-by-side.XXXXXX)
#   CONF_DIR, QUEUE_DIR, DATA_DIR, LOG_FILE  of the private Postfix (default /etc/postfix-big ...)
#
# Everything it starts it stops on exit (mailhops by PID, Postfix with postfix_stop.sh --purge,
# the sinks with sink.sh stop); Postfix's watchdog stops it after an hour whatever happens.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
if [[ -z ${PERF:-} ]]; then
  for d in "$REPO/../shared/perf" /work/shared/perf; do [[ -d $d ]] && PERF=$(cd "$d" && pwd) && break; done
fi
[[ -d ${PERF:-} ]] || { echo "no shared perf kit; set PERF" >&2; exit 1; }
ROUNDS=${ROUNDS:-3}
BIG=${BIG:-1} SMALL=${SMALL:-1} MEMORY=${MEMORY:-0} OLD_BIG=${OLD_BIG:-1}
BIG_CONC=${BIG_CONC:-10}
BIG_RUNS=${BIG_RUNS:-1M:200 10M:50}
SMALL_CONC=${SMALL_CONC:-100} SMALL_REUSE=${SMALL_REUSE:-20000} SMALL_NEW=${SMALL_NEW:-10000} SMALL_SIZE=${SMALL_SIZE:-1024}
MEM_CONNS=${MEM_CONNS:-1000} MEM_SIZE=${MEM_SIZE:-10M} IDLE=${IDLE:-10000} MEM_DIR=${MEM_DIR:-/var/tmp}
MAX_TIME=${MAX_TIME:-300}
DRAIN_MAX=${DRAIN_MAX:-300}
T_SINK=10040 NEW_PORT=10041 NEW_SINK=10042 OLD_PORT=10043 OLD_SINK=10044 PF_PORT=10045 PF_SINK=10046
MEM_PORT=10047 MEM_SINK=10048
CONF_DIR=${CONF_DIR:-/etc/postfix-big}
QUEUE_DIR=${QUEUE_DIR:-/var/spool/postfix-big}
DATA_DIR=${DATA_DIR:-/var/lib/postfix-big}
LOG_FILE=${LOG_FILE:-/var/log/postfix-big.log}
export CONF_DIR QUEUE_DIR DATA_DIR LOG_FILE

for tool in postfix postconf smtp-sink smtp-source python3; do
  command -v "$tool" >/dev/null || { echo "needs $tool (Debian: apt-get install postfix python3)" >&2; exit 1; }
done
TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target}
MAILHOP=${MAILHOP:-$TARGET_DIR/release/mailhop}
OLD_MAILHOP=${OLD_MAILHOP:-/work/bins/old/mailhop}
[[ -x $MAILHOP ]] || { echo "no mailhop at $MAILHOP; cargo build --release first" >&2; exit 1; }
[[ -x $OLD_MAILHOP ]] || { echo "no old mailhop at $OLD_MAILHOP; set OLD_MAILHOP" >&2; exit 1; }
if [[ -z ${LOAD:-} ]]; then
  LOAD=$(cd "$REPO" && cargo bench --bench load --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\)).*/\1/p' | tail -n1)
  [[ $LOAD = /* ]] || LOAD="$REPO/$LOAD"
fi
[[ -x $LOAD ]] || { echo "no load harness binary ($LOAD)" >&2; exit 1; }
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

OUT=${OUT:-$(mktemp -d /tmp/big-side-by-side.XXXXXX)}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: > "$RESULTS"
: > "$OUT/commands.txt"

# --- the driver: runs one load command, waits for the sink, adds server CPU and memory ------
cat > "$OUT/drive.py" <<'EOF'
"""drive.py RESULTS BENCH RELAY ROUND KIND SINK_PORT|- PID|- DRAIN_MAX -- CMD...

KIND: load (the harness, one JSON line) or source (accept_rate.sh, one key=value line).
Runs CMD; then, with a sink, waits (5 ms polling, bounded) until the sink counted every accepted
message. Over the whole run it measures the CPU of the process tree under PID (utime + stime +
cutime + cstime) and samples its RSS and PSS every 100 ms. Appends one JSON line to RESULTS and
prints a one-line summary."""
import json, os, re, subprocess, sys, threading, time

hz = os.sysconf("SC_CLK_TCK")
ROOTS = [int(x) for x in os.environ.get("BENCH_ROOTS", "").split(",") if x]
QUIET_CPU = float(os.environ.get("QUIET_CPU", "0.15"))
QUIET_WAIT = float(os.environ.get("QUIET_WAIT", "180"))


def foreign_snapshot():
    """CPU ticks (with reaped children) of every user process outside our trees."""
    kids, info = {}, {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                s = open(f"/proc/{d}/stat").read()
                f = s[s.rfind(")") + 2:].split()
                ppid = int(f[1])
                kids.setdefault(ppid, []).append(int(d))
                info[int(d)] = (ppid, sum(int(x) for x in f[11:15]), f[19])
            except (OSError, ValueError, IndexError):
                pass
    ours, todo = set(), list(ROOTS)
    while todo:
        p = todo.pop()
        if p not in ours:
            ours.add(p)
            todo.extend(kids.get(p, []))
    return {p: (t, st) for p, (pp, t, st) in info.items() if p not in ours and p != 2 and pp != 2}


def foreign_cpu(a, b):
    """CPU seconds used outside our trees between snapshots a and b."""
    t = 0
    for p, (ticks, st) in b.items():
        if p in a and a[p][1] == st:
            t += ticks - a[p][0]
        else:
            t += ticks
    return t / hz


def quiet_wait():
    """Wait (bounded) until the machine outside our processes is quiet for a second."""
    t0 = time.time()
    while True:
        a = foreign_snapshot()
        time.sleep(1)
        f = foreign_cpu(a, foreign_snapshot())
        if f < QUIET_CPU or time.time() - t0 > QUIET_WAIT:
            return round(time.time() - t0, 1), round(f, 2)


if sys.argv[1] == "--quiet":
    w, f = quiet_wait()
    if w > 1.5 or f >= QUIET_CPU:
        print(f"  (waited {w} s for other processes to go quiet; last second {f} cores)", flush=True)
    sys.exit(0)

results, bench, relay, rnd, kind, sink, pid, drain_max = sys.argv[1:9]
cmd = sys.argv[10:]
pid = None if pid == "-" else int(pid)


def sink_count(port):
    try:
        with open(f"/tmp/perf-sink-{port}.log", "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 512))
            m = re.findall(rb"mesg=(\d+)", f.read())
            return int(m[-1]) if m else 0
    except OSError:
        return 0


def tree(root):
    kids = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                s = open(f"/proc/{d}/stat").read()
                kids.setdefault(int(s[s.rfind(")") + 2:].split()[1]), []).append(int(d))
            except (OSError, ValueError, IndexError):
                pass
    out, todo = [], [root]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu(root):
    t = 0
    for p in tree(root):
        try:
            s = open(f"/proc/{p}/stat").read()
            f = s[s.rfind(")") + 2:].split()
            t += sum(int(x) for x in f[11:15])
        except (OSError, ValueError, IndexError):
            pass
    return t / hz


def kb(path, key):
    try:
        for line in open(path):
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


peak = {"rss_kb": 0, "pss_kb": 0}
stop = threading.Event()


def sampler():
    while not stop.is_set():
        ps = tree(pid)
        rss = sum(kb(f"/proc/{p}/status", "VmRSS:") for p in ps)
        pss = sum(kb(f"/proc/{p}/smaps_rollup", "Pss:") for p in ps)
        peak["rss_kb"] = max(peak["rss_kb"], rss)
        peak["pss_kb"] = max(peak["pss_kb"], pss)
        stop.wait(0.1)


waited, quiet_last = quiet_wait()
before = sink_count(sink) if sink != "-" else 0
cpu0 = cpu(pid) if pid else None
fs0 = foreign_snapshot()
th = None
if pid:
    th = threading.Thread(target=sampler, daemon=True)
    th.start()
t0 = time.time()
p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
t_exit = time.time()
line = p.stdout.strip().splitlines()[-1] if p.stdout.strip() else ""
if kind == "load":
    d = json.loads(line)
    accepted, elapsed = d["accepted"], d["elapsed_s"]
    size = d["size"]
else:  # accept_rate.sh: target=.. conc=.. count=.. size=.. reuse=.. secs=.. msgs_per_sec=.. rc=..
    d = dict(kv.split("=", 1) for kv in line.split())
    for k, v in list(d.items()):
        try:
            d[k] = float(v) if "." in v else int(v)
        except ValueError:
            pass
    elapsed = d["secs"]
    # smtp-source does not report how many were accepted; rc != 0 means trouble
    accepted = d["count"] if d.get("rc") == 0 else None
    d["accepted_per_s"] = d["msgs_per_sec"]
    size = d["size"]
d["rc_cmd"] = p.returncode
if sink != "-":
    deadline = time.time() + float(drain_max)
    want = before + (accepted if accepted is not None else d["count"])
    while True:
        now = sink_count(sink)
        if now >= want or time.time() > deadline:
            break
        time.sleep(0.005)
    t_done = time.time()
    delivered = now - before
    d["delivered"] = delivered
    d["drained"] = now >= want
    d["e2e_s"] = round(elapsed + (t_done - t_exit), 3)
    d["e2e_per_s"] = round(delivered / d["e2e_s"], 3)
    if kind == "load":
        d["e2e_mb_per_s"] = round(delivered * size / d["e2e_s"] / 1e6, 3)
t_end = time.time()
d["foreign"] = {"waited_s": waited, "cpu_s": round(foreign_cpu(fs0, foreign_snapshot()), 2), "wall_s": round(t_end - t0, 2)}
if pid:
    stop.set()
    th.join()
    c = cpu(pid) - cpu0
    n = accepted or d.get("count") or 1
    d["tree"] = {"cpu_s": round(c, 3), "cpu_us_per_msg": round(c / n * 1e6, 1),
                 "peak_rss_bytes": peak["rss_kb"] * 1024, "peak_pss_bytes": peak["pss_kb"] * 1024}
d.update(bench=bench, relay=relay, round=int(rnd), command=" ".join(cmd))
with open(results, "a") as f:
    f.write(json.dumps(d) + "\n")
rate = d.get("accepted_mb_per_s") if kind == "load" else d.get("accepted_per_s")
unit = "MB/s" if kind == "load" else "msg/s"
extra = ""
if "e2e_s" in d:
    e = d.get("e2e_mb_per_s") if kind == "load" else d["e2e_per_s"]
    extra = f", e2e {e} {unit}{'' if d['drained'] else ' (NOT DRAINED)'}"
errs = d.get("errors", d.get("rc", 0))
fo = d["foreign"]
fnote = f"; other processes {fo['cpu_s']} CPU s in {fo['wall_s']} s" if fo["cpu_s"] > 0.05 * fo["wall_s"] else ""
wnote = f" (waited {waited} s for quiet)" if waited > 1.5 else ""
print(f"  round {rnd} {bench:<12} {relay:<8} {rate} {unit}{extra}, errors/rc {errs}{fnote}{wnote}", flush=True)
EOF

# --- servers ------------------------------------------------------------------------------
NEW_PID= OLD_PID= MEM_PID= PF_STARTED=
SINKS=()
stop_pid() { local p=$1; [[ -n $p ]] && kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; return 0; }
cleanup() {
  set +e
  stop_pid "$NEW_PID"; stop_pid "$OLD_PID"; stop_pid "$MEM_PID"
  [[ -n $PF_STARTED ]] && "$PERF/postfix_stop.sh" --purge >/dev/null 2>&1
  for s in "${SINKS[@]}"; do "$PERF/sink.sh" stop "$s" >/dev/null 2>&1; done
  [[ -n ${MEM_Q:-} ]] && rm -rf "$MEM_Q"
}
trap cleanup EXIT

# our process trees (this script, the sinks, Postfix): CPU outside them counts as "other processes"
BENCH_ROOTS=$$
export BENCH_ROOTS QUIET_CPU=${QUIET_CPU:-0.15} QUIET_WAIT=${QUIET_WAIT:-180}
start_sink() { local p; p=$("$PERF/sink.sh" "$1" 3600); SINKS+=("$1"); BENCH_ROOTS+=",$p"; }
quiet() { python3 "$OUT/drive.py" --quiet; }
wait_port() { for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }
# mailhop_conf FILE PORT SINK QUEUE [extra lines]
mailhop_conf() {
  cat > "$1" <<EOF2
hostname = "relay.example.test"
listen = ["127.0.0.1:$2"]
queue = "$4"
maildir = "$(dirname "$4")/mail"
max_connections_per_ip = 20000
max_message_size = 20971520
${5:-}
[routes]
"*" = "127.0.0.1:$3"
EOF2
}
# start_mailhop BINARY CONF LOG -> sets STARTED_PID
start_mailhop() {
  "$1" serve --config "$2" 2> "$3" &
  STARTED_PID=$!
}
rss_kb() { awk -v k="$2" '$1 == k {print $2}' "/proc/$1/status"; }

start_sink $T_SINK
if [[ $BIG == 1 || $SMALL == 1 ]]; then
  start_sink $NEW_SINK; start_sink $OLD_SINK
  mkdir -p "$OUT/new" "$OUT/old"
  mailhop_conf "$OUT/new/mailhop.toml" $NEW_PORT $NEW_SINK "$OUT/new/mh.db"
  mailhop_conf "$OUT/old/mailhop.toml" $OLD_PORT $OLD_SINK "$OUT/old/mh.db"
  start_mailhop "$MAILHOP" "$OUT/new/mailhop.toml" "$OUT/new/mailhop.log"; NEW_PID=$STARTED_PID
  start_mailhop "$OLD_MAILHOP" "$OUT/old/mailhop.toml" "$OUT/old/mailhop.log"; OLD_PID=$STARTED_PID
  wait_port $NEW_PORT && wait_port $OLD_PORT || { echo "mailhop did not start"; tail "$OUT"/*/mailhop.log; exit 1; }
  echo "new mailhop $MAILHOP (pid $NEW_PID) on :$NEW_PORT -> smtp-sink :$NEW_SINK"
  echo "old mailhop $OLD_MAILHOP (pid $OLD_PID) on :$OLD_PORT -> smtp-sink :$OLD_SINK"
fi
if [[ $BIG == 1 ]]; then
  start_sink $PF_SINK
  PF_STARTED=1
  "$PERF/postfix_setup.sh" 127.0.0.1:$PF_PORT 127.0.0.1:$PF_SINK > "$OUT/postfix_setup.log"
  postconf -c "$CONF_DIR" -e "message_size_limit = 20971520"
  postfix -c "$CONF_DIR" reload >/dev/null 2>&1
  sleep 1
  wait_port $PF_PORT
  PF_PID=$(tr -d ' ' < "$QUEUE_DIR/pid/master.pid")
  BENCH_ROOTS+=",$PF_PID"
  echo "Postfix $(postconf -c "$CONF_DIR" -h mail_version) (master pid $PF_PID, $CONF_DIR) on :$PF_PORT -> smtp-sink :$PF_SINK," \
       "message_size_limit $(postconf -c "$CONF_DIR" -h message_size_limit)"
fi
echo "smtp-sink (as a target, stores nothing) on :$T_SINK"
echo "load $LOAD"
echo "results in $OUT"

# port / sink / pid of a server name
server() {
  case $1 in
    sink) PORT=$T_SINK SINK=- PID=- ;;
    new) PORT=$NEW_PORT SINK=$NEW_SINK PID=$NEW_PID ;;
    old) PORT=$OLD_PORT SINK=$OLD_SINK PID=$OLD_PID ;;
    postfix) PORT=$PF_PORT SINK=$PF_SINK PID=$PF_PID ;;
  esac
}
# rotate "a b c" by N
rotate() { local n=$1; shift; local a=("$@"); local k=${#a[@]}; for ((i = 0; i < k; i++)); do printf '%s ' "${a[(i + n) % k]}"; done; }

drive() { # BENCH RELAY ROUND KIND SINK PID -- CMD...
  echo "round $3 $1 $2: ${*:8}" >> "$OUT/commands.txt"
  python3 "$OUT/drive.py" "$RESULTS" "$1" "$2" "$3" "$4" "$5" "$6" "$DRAIN_MAX" "${@:7}"
}

# --- item 1: large messages --------------------------------------------------------------
if [[ $BIG == 1 ]]; then
  big_servers=(sink postfix new); [[ $OLD_BIG == 1 ]] && big_servers+=(old)
  echo; echo "== large messages, c=$BIG_CONC, connections reused =="
  for round in $(seq 1 "$ROUNDS"); do
    for run in $BIG_RUNS; do
      size=${run%:*} msgs=${run#*:}
      for s in $(rotate $((round - 1)) "${big_servers[@]}"); do
        server "$s"
        pidargs=(); [[ $PID != - ]] && pidargs=(--server-pid-tree "$PID")
        drive "big-$size" "$s" "$round" load "$SINK" "$PID" -- "$LOAD" --target 127.0.0.1:$PORT \
          --connections "$BIG_CONC" --messages "$msgs" --size "$size" --reuse "${pidargs[@]}" --max-time "$MAX_TIME" --json
      done
    done
  done
fi

# --- item 3: small messages, no regression -------------------------------------------------
if [[ $SMALL == 1 ]]; then
  echo; echo "== ${SMALL_SIZE} B messages, smtp-source, c=$SMALL_CONC =="
  for round in $(seq 1 "$ROUNDS"); do
    for s in $(rotate $((round - 1)) old new sink); do
      server "$s"
      # accept, reused; the mailhops drain into their sinks before the next run (not timed)
      drive accept-reuse "$s" "$round" source "$SINK" "$PID" -- env REUSE=1 MAX_TIME="$MAX_TIME" \
        "$PERF/accept_rate.sh" 127.0.0.1:$PORT "$SMALL_CONC" "$SMALL_REUSE" "$SMALL_SIZE"
      drive accept-new "$s" "$round" source "$SINK" "$PID" -- env REUSE=0 MAX_TIME="$MAX_TIME" \
        "$PERF/accept_rate.sh" 127.0.0.1:$PORT "$SMALL_CONC" "$SMALL_NEW" "$SMALL_SIZE"
      if [[ $s != sink ]]; then
        drive e2e-reuse "$s" "$round" source "$SINK" "$PID" -- env REUSE=1 MAX_TIME="$MAX_TIME" \
          "$PERF/accept_rate.sh" 127.0.0.1:$PORT "$SMALL_CONC" "$SMALL_REUSE" "$SMALL_SIZE"
      fi
    done
  done
fi

stop_pid "$NEW_PID"; NEW_PID=; stop_pid "$OLD_PID"; OLD_PID=

# --- item 2: memory ----------------------------------------------------------------------
if [[ $MEMORY == 1 ]]; then
  echo; echo "== memory =="
  start_sink $MEM_SINK
  free_gb=$(df -P -BG "$MEM_DIR" | awk 'NR == 2 {sub("G", "", $4); print $4}')
  (( free_gb > 25 )) || { echo "MEM_DIR $MEM_DIR has only ${free_gb} GB free; needs > 25" >&2; exit 1; }
  MEM_Q=$(mktemp -d "$MEM_DIR/mailhop-mem.XXXXXX")
  mailhop_conf "$MEM_Q/mailhop.toml" $MEM_PORT $MEM_SINK "$MEM_Q/mh.db"
  start_mailhop "$MAILHOP" "$MEM_Q/mailhop.toml" "$OUT/mem-big.log"; MEM_PID=$STARTED_PID
  wait_port $MEM_PORT; sleep 2
  idle=$(rss_kb $MEM_PID VmRSS:)
  cmd=("$LOAD" --target 127.0.0.1:$MEM_PORT --connections "$MEM_CONNS" --messages "$MEM_CONNS" --size "$MEM_SIZE"
       --server-pid "$MEM_PID" --max-time 900 --json)
  echo "memory: ${cmd[*]}" >> "$OUT/commands.txt"
  before=$("$PERF/sink.sh" count $MEM_SINK)
  quiet
  line=$("${cmd[@]}")
  t_end=$(date +%s.%N)
  hwm=$(rss_kb $MEM_PID VmHWM:); rss_end=$(rss_kb $MEM_PID VmRSS:)
  q_bytes=$(du -sb "$MEM_Q" | cut -f1)
  # until 10 s after the load: note when the sink has them all; then RSS; then wait out the rest
  t_drained=
  while python3 -c "import sys, time; sys.exit(time.time() - $t_end >= 10)"; do
    [[ -z $t_drained && $("$PERF/sink.sh" count $MEM_SINK) -ge $((before + MEM_CONNS)) ]] && t_drained=$(date +%s.%N)
    sleep 0.1
  done
  rss10=$(rss_kb $MEM_PID VmRSS:)
  at10=$("$PERF/sink.sh" count $MEM_SINK)
  deadline=$(( $(date +%s) + DRAIN_MAX ))
  while [[ $("$PERF/sink.sh" count $MEM_SINK) -lt $((before + MEM_CONNS)) && $(date +%s) -lt $deadline ]]; do sleep 0.2; done
  [[ -n $t_drained ]] || t_drained=$(date +%s.%N)
  rss_drained=$(rss_kb $MEM_PID VmRSS:)
  delivered=$(( $("$PERF/sink.sh" count $MEM_SINK) - before ))
  python3 -c 'import json,sys; d=json.loads(sys.argv[1]); k=[int(x) for x in sys.argv[2:9]]; t_end,t_dr=float(sys.argv[9]),float(sys.argv[10])
d.update(bench="memory-1000x10M", relay="new", idle_rss_kb=k[0], vmhwm_kb=k[1], rss_at_end_kb=k[2], rss_10s_after_kb=k[3],
         delivered_10s_after=k[4], delivered=k[5], queue_dir_bytes_at_end=k[6], drain_after_load_s=round(t_dr-t_end,1), rss_drained_kb=int(sys.argv[11]))
print(json.dumps(d))' "$line" "$idle" "$hwm" "$rss_end" "$rss10" "$((at10 - before))" "$delivered" "$q_bytes" "$t_end" "$t_drained" "$rss_drained" >> "$RESULTS"
  stop_pid "$MEM_PID"; MEM_PID=
  rm -rf "$MEM_Q"; MEM_Q=

  # 10,000 idle sessions, fresh mailhop each time
  for round in $(seq 1 "$ROUNDS"); do
    for build in $(rotate $((round - 1)) new old); do
      bin=$MAILHOP; [[ $build == old ]] && bin=$OLD_MAILHOP
      MEM_Q=$(mktemp -d /tmp/mailhop-idle.XXXXXX)
      mailhop_conf "$MEM_Q/mailhop.toml" $MEM_PORT $MEM_SINK "$MEM_Q/mh.db" "max_connections = $((IDLE * 2))"
      start_mailhop "$bin" "$MEM_Q/mailhop.toml" "$MEM_Q/mailhop.log"; MEM_PID=$STARTED_PID
      wait_port $MEM_PORT; sleep 2
      idle=$(rss_kb $MEM_PID VmRSS:)
      echo "idle round $round $build: python3 $PERF/idle_conns.py 127.0.0.1:$MEM_PORT $IDLE --hold 5" >> "$OUT/commands.txt"
      quiet
      python3 "$PERF/idle_conns.py" 127.0.0.1:$MEM_PORT "$IDLE" --hold 5 > "$MEM_Q/idle.txt" 2>&1 &
      ic=$!
      peak=0
      while kill -0 $ic 2>/dev/null; do
        r=$(rss_kb $MEM_PID VmRSS:); (( r > peak )) && peak=$r
        sleep 0.2
      done
      wait $ic || true
      hwm=$(rss_kb $MEM_PID VmHWM:)
      python3 -c 'import json,sys; k=[int(x) for x in sys.argv[1:5]]; n=int(sys.argv[5])
print(json.dumps(dict(bench="idle", relay=sys.argv[6], round=int(sys.argv[7]), sessions=n, idle_rss_kb=k[0], peak_rss_kb=k[1], vmhwm_kb=k[2],
      kb_per_session=round((k[1]-k[0])/n, 2), report=open(sys.argv[8]).read())))' \
        "$idle" "$peak" "$hwm" 0 "$IDLE" "$build" "$round" "$MEM_Q/idle.txt" >> "$RESULTS"
      printf '  round %s idle %s: idle %s kB, with %s sessions %s kB -> %s kB/session\n' "$round" "$build" "$idle" "$IDLE" "$peak" \
        "$(python3 -c "print(round(($peak-$idle)/$IDLE, 2))")"
      stop_pid "$MEM_PID"; MEM_PID=
      rm -rf "$MEM_Q"; MEM_Q=
    done
  done
fi

# --- medians ------------------------------------------------------------------------------
python3 - "$RESULTS" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None
def f(x, fmt="{:,.1f}"):
    return "-" if x is None else fmt.format(x)
name = {"sink": "smtp-sink", "postfix": "Postfix", "new": "mailhop (new)", "old": "mailhop (old)"}
nrounds = len({r["round"] for r in rows if "round" in r})

big = [r for r in rows if r["bench"].startswith("big-")]
if big:
    print(f"\nLarge messages, c={big[0]['connections']}, connections reused; medians of {nrounds} rounds")
    print("| size x msgs | server | accepted MB/s | % of smtp-sink | end to end MB/s | server CPU ms/msg (load / to drained) | peak PSS (RSS) MiB | errors |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for bench in sorted({r["bench"] for r in big}, key=lambda b: ("10M" in b, b)):
        sink = med([r["accepted_mb_per_s"] for r in big if r["bench"] == bench and r["relay"] == "sink"])
        for s in ("sink", "postfix", "new", "old"):
            rs = [r for r in big if r["bench"] == bench and r["relay"] == s]
            if not rs:
                continue
            mbs = med([r["accepted_mb_per_s"] for r in rs])
            e2e = med([r.get("e2e_mb_per_s") for r in rs])
            cpu_l = med([r["server"]["cpu_us_per_accepted"] / 1000 for r in rs if r.get("server")])
            cpu_t = med([r["tree"]["cpu_us_per_msg"] / 1000 for r in rs if r.get("tree")])
            pss = med([max(r["server"].get("peak_pss_bytes") or 0, r["tree"]["peak_pss_bytes"]) / 2**20 for r in rs if r.get("tree")])
            rss = med([max(r["server"].get("peak_rss_bytes") or 0, r["tree"]["peak_rss_bytes"]) / 2**20 for r in rs if r.get("tree")])
            pct = f"{mbs / sink * 100:.0f}%" if sink and s != "sink" else "-"
            errs = sum(r["errors"] for r in rs)
            nd = "" if all(r.get("drained", True) for r in rs) else " (not drained)"
            print(f"| {bench[4:]} x {rs[0]['messages']} | {name[s]} | {f(mbs)} | {pct} | {f(e2e)} | "
                  f"{f(cpu_l, '{:.2f}')} / {f(cpu_t, '{:.2f}')} | {f(pss)} ({f(rss)}) | {errs}{nd} |")

small = [r for r in rows if r["bench"] in ("accept-reuse", "accept-new", "e2e-reuse")]
if small:
    print(f"\n{small[0]['size']} B messages, smtp-source, c={small[0]['conc']}; medians of {nrounds} rounds")
    print("| load | smtp-sink msg/s | old mailhop msg/s | new mailhop msg/s | new / old | old % of sink | new % of sink | rounds (new) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for bench, label in (("accept-reuse", "accept, reused"), ("accept-new", "accept, new connection per message"), ("e2e-reuse", "end to end, reused")):
        key = "e2e_per_s" if bench.startswith("e2e") else "accepted_per_s"
        m = {}
        for s in ("sink", "old", "new"):
            m[s] = med([r.get(key) for r in small if r["bench"] == bench and r["relay"] == s])
        # end to end has no sink figure of its own: compare with the sink's accept rate, reused
        ref = m["sink"] or med([r["accepted_per_s"] for r in small if r["bench"] == "accept-reuse" and r["relay"] == "sink"])
        cnt = [r["count"] for r in small if r["bench"] == bench][0]
        raw = ", ".join(f"{r.get(key):,.0f}" for r in small if r["bench"] == bench and r["relay"] == "new")
        bad = [r for r in small if r["bench"] == bench and (r.get("rc") != 0 or not r.get("drained", True))]
        pct = lambda s: f"{m[s] / ref * 100:.0f}%" if m[s] and ref else "-"
        print(f"| {label}, {cnt:,} msgs | {f(m['sink'], '{:,.0f}')} | {f(m['old'], '{:,.0f}')} | {f(m['new'], '{:,.0f}')} | "
              f"{f(m['new'] / m['old'] if m['new'] and m['old'] else None, '{:.2f}')} | {pct('old')} | {pct('new')} | {raw}"
              f"{' (%d runs with rc != 0 or not drained)' % len(bad) if bad else ''} |")
    print("(end to end: % of smtp-sink's accept rate, reused)")

mem = [r for r in rows if r["bench"].startswith("memory")]
for r in mem:
    print(f"\nMemory, {r['connections']} concurrent sessions x one {r['size'] / 2**20:.0f} MiB message to new mailhop:")
    print(f"  idle RSS before {r['idle_rss_kb'] / 1024:.1f} MiB; VmHWM {r['vmhwm_kb'] / 1024:.1f} MiB; harness sampled peak "
          f"{(r['server']['peak_rss_bytes'] or 0) / 2**20:.1f} MiB; RSS at end {r['rss_at_end_kb'] / 1024:.1f} MiB, "
          f"10 s after {r['rss_10s_after_kb'] / 1024:.1f} MiB, after drain {r['rss_drained_kb'] / 1024:.1f} MiB")
    print(f"  accepted {r['accepted']} in {r['elapsed_s']:.1f} s ({r['accepted_mb_per_s']:.1f} MB/s), errors {r['errors']}; "
          f"delivered {r['delivered_10s_after']} by 10 s after, {r['delivered']} in all ({r['drain_after_load_s']} s after the load); "
          f"queue dir at end {r['queue_dir_bytes_at_end'] / 1e9:.2f} GB")
noisy = [r for r in rows if r.get("foreign") and r["foreign"]["cpu_s"] > 0.1 * r["foreign"]["wall_s"]]
if noisy:
    print(f"\nRuns during which processes outside the benchmark used > 0.1 core: {len(noisy)} of {len([r for r in rows if r.get('foreign')])}")
    for r in noisy:
        print(f"  round {r['round']} {r['bench']} {r['relay']}: {r['foreign']['cpu_s']} CPU s in {r['foreign']['wall_s']} s")
idle = [r for r in rows if r["bench"] == "idle"]
if idle:
    print(f"\n{idle[0]['sessions']:,} idle sessions, fresh mailhop; medians of {len({r['round'] for r in idle})} rounds")
    print("| build | idle RSS MiB | RSS with sessions open MiB | kB per session | per round |")
    print("| --- | --- | --- | --- | --- |")
    for s in ("old", "new"):
        rs = [r for r in idle if r["relay"] == s]
        if rs:
            print(f"| {name[s]} | {med([r['idle_rss_kb'] / 1024 for r in rs]):.1f} | {med([r['peak_rss_kb'] / 1024 for r in rs]):.1f} | "
                  f"{med([r['kb_per_session'] for r in rs]):.2f} | {', '.join(str(r['kb_per_session']) for r in rs)} |")
EOF
