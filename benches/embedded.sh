#!/usr/bin/env bash
# Capacity of the embedded mode (waypoint serve --embedded: in-process rumqttd
# + SQLite) against the production setup (the same binary behind Mosquitto +
# PostgreSQL), measured side by side with firmware-sim at increasing message
# rates, plus database growth per fix on both.
#
#   benches/embedded.sh                      # default run, ≈ 4–5 min here
#   benches/embedded.sh --rates "250 1000 2000 4000" --duration 30
#   benches/embedded.sh --connections-probe 2100   # one device per connection, N devices
#   benches/embedded.sh --help
#
# It starts its own servers on free ports in a temporary directory and removes
# them on exit: one `waypoint serve --embedded` (its SQLite database in the
# temporary directory) and one `waypoint serve` on a fresh PostgreSQL database
# (dropped at the end) behind the machine's Mosquitto (127.0.0.1:1883 by
# default, under a topic prefix of its own, with a client id of its own: it
# never disturbs other users of that broker and never stops or reconfigures it).
# Both servers run for the whole script; each step runs firmware-sim against
# one, then the other (the order alternates from step to step), so machine
# noise falls on both alike.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

usage() {
	cat <<'EOF'
Usage: benches/embedded.sh [options]

  --rates "R1 R2 ..."    offered message rates, msg/s, ascending (default "1000 2500 4000 6000")
  --duration S           seconds of load per step and server (default 20)
  --devices N            simulated supervisees per step (default 1000; plus victims' devices)
  --connections N        MQTT connections the devices share (default 100; 0 = one per device)
  --interval S           device reporting interval in simulated seconds (default 60)
  --fixes-per-message N  fixes per message (default 1)
  --connections-probe N  also run N devices with one connection each at 1 msg/s per 30 devices
                         against the embedded server only (rumqttd allows 2 048 connections)
  --only embedded|pg     run one side only
  --embedded-args "..."  extra `waypoint serve` options for the embedded server (e.g. "--batch-max-delay-ms 2")
  --no-build             use the existing release binaries
  --pg URL               PostgreSQL server URL without database (default postgres://postgres@127.0.0.1:5432)
  --mqtt URL             baseline broker (default mqtt://127.0.0.1:1883)
  --out DIR              keep reports (firmware-sim JSON, server logs) in DIR
  --keep                 keep the temporary directory and the PostgreSQL database
  --summarize DIR        only print the tables again from the reports a run kept in DIR (--out)

A step passes (criterion used for the capacity figure) when: the generator kept up (≤ 1 % of
messages sent > 100 ms late), every PUBACK arrived, every fix sent is in the database, PUBACK
p99 < 1 s, alerts arrived with latency p99 < 2 s and none expected was missed, and the server was
never more than 2 s of load behind (messages sent but not yet acknowledged after the commit ≤
2 × the offered rate). Server CPU is the Waypoint process only (the baseline's Mosquitto and
PostgreSQL are other processes).
EOF
}

die() {
	echo "embedded.sh: $*" >&2
	exit 2
}
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

RATES="1000 2500 4000 6000" DURATION=20 DEVICES=1000 CONNECTIONS=100 INTERVAL=60 FPM=1
PROBE=0 ONLY="" BUILD=1 OUT="" KEEP=0 SUMMARIZE="" EMB_ARGS=""
PG_BASE="postgres://postgres@127.0.0.1:5432"
MQTT_BASE="mqtt://127.0.0.1:1883"
while [[ $# -gt 0 ]]; do
	case "$1" in
	--rates) RATES=${2?} && shift ;;
	--duration) DURATION=${2:?} && shift ;;
	--devices) DEVICES=${2:?} && shift ;;
	--connections) CONNECTIONS=${2:?} && shift ;;
	--interval) INTERVAL=${2:?} && shift ;;
	--fixes-per-message) FPM=${2:?} && shift ;;
	--connections-probe) PROBE=${2:?} && shift ;;
	--only) ONLY=${2:?} && shift ;;
	--embedded-args) EMB_ARGS=${2:?} && shift ;;
	--no-build) BUILD=0 ;;
	--pg) PG_BASE=${2:?} && shift ;;
	--mqtt) MQTT_BASE=${2:?} && shift ;;
	--out) OUT=${2:?} && shift ;;
	--keep) KEEP=1 ;;
	--summarize) SUMMARIZE=${2:?} && shift ;;
	-h | --help) usage && exit 0 ;;
	*) usage >&2 && die "unknown option $1" ;;
	esac
	shift
done
[[ -z $ONLY || $ONLY == embedded || $ONLY == pg ]] || die "--only embedded|pg"
[[ $CONNECTIONS == 0 ]] && CONNECTIONS=$DEVICES

summarize() {
python3 - "$OUT" "$OUT/growth.json" "$RATES" "$PROBE" "$INTERVAL" "$FPM" <<'EOF'
import json, os, sys
out, growth, rates, probe, interval, fpm = sys.argv[1:7]
rates = rates.split()
g = json.load(open(growth)) if os.path.exists(growth) else {}

def load(side, tag):
    p = os.path.join(out, f"{side}-{tag}.json")
    return json.load(open(p)) if os.path.exists(p) else None

def verdict(r):
    if r is None or "error" in r:
        return None
    l = r["load"]
    late = l["behind_schedule"] / max(1, l["sent"])
    stored = l.get("fixes_stored")
    lost = None if stored is None else l["fixes_sent"] - stored
    samples = r.get("samples", [])
    max_lag = max((s.get("lag") or 0 for s in samples), default=0)
    alerts = r.get("alerts") or {"missed": [], "unexpected": []}
    ok = (late <= 0.01 and l["puback_missing"] == 0 and lost == 0
          and r["puback_latency"]["p99_ms"] < 1000
          and r["alert_latency"]["count"] > 0 and r["alert_latency"]["p99_ms"] < 2000
          and not alerts["missed"] and max_lag <= 2 * l["target_rate"])
    return dict(achieved=l["achieved_rate"], sent=l["sent"], late=late, missing=l["puback_missing"],
                fixes=l["fixes_sent"], lost=lost, pub=r["puback_latency"], alert=r["alert_latency"],
                extra=r.get("stored_after_extra_wait_s", 0), conn_err=l["connection_errors"],
                max_lag=max_lag, ok=ok, cpu=r.get("server_cpu_s"),
                verdict=(f"{len(r['alerts']['missed'])} / {len(r['alerts']['unexpected'])}"
                         if r.get("alerts") else "–"))

def fmt(v):
    if v is None:
        return "| failed (see the firmware-sim log) |" + " |" * 11
    return (f"| {v['achieved']:,.0f} | {v['missing']} | {v['fixes']:,} | {v['lost']} | {v['late']*100:.1f} % "
            f"| {v['pub']['p50_ms']:.1f} / {v['pub']['p99_ms']:.1f} "
            f"| {v['alert']['p50_ms']:.0f} / {v['alert']['p99_ms']:.0f} (n={v['alert']['count']}) "
            f"| {v['max_lag']:,} | {v['verdict']} "
            f"| {'–' if v['cpu'] is None else format(v['cpu'] / max(v['sent'], 1) * 1e6, '.0f')} "
            f"| {'yes' if v['ok'] else 'no'} |")

print()
print(f"Steps: {fpm} fix(es) per message; PUBACK and alert latency p50 / p99 in ms; lag = messages sent "
      "but not yet acknowledged by Waypoint (max over the run)")
print()
print("| offered msg/s | server | achieved msg/s | PUBACK missing | fixes sent | lost | sent > 100 ms late "
      "| PUBACK ms | alert ms | max lag | alerts missed / unexpected | server CPU µs/msg | passes |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
best = {"embedded": 0, "pg": 0}
broken = {"embedded": False, "pg": False}
ratios = []
for rate in rates:
    vs = {}
    for side, name in (("embedded", "embedded (rumqttd + SQLite)"), ("pg", "Mosquitto + PostgreSQL")):
        r = load(side, rate)
        if r is None:
            continue
        v = verdict(r)
        vs[side] = v
        print(f"| {int(rate):,} | {name} " + fmt(v))
        if v and v["ok"] and not broken[side]:
            best[side] = int(rate)
        else:
            broken[side] = True
    e, p = vs.get("embedded"), vs.get("pg")
    if e and p and p["alert"]["p99_ms"] > 0 and p["pub"]["p99_ms"] > 0:
        ratios.append((rate, e["alert"]["p99_ms"] / p["alert"]["p99_ms"],
                       e["pub"]["p99_ms"] / p["pub"]["p99_ms"], e["achieved"] / max(p["achieved"], 1)))
if ratios:
    print()
    print("| offered msg/s | embedded ÷ baseline: alert p99 | PUBACK p99 | achieved rate |")
    print("|---|---|---|---|")
    for rate, a, b, c in ratios:
        print(f"| {int(rate):,} | {a:.2f} | {b:.2f} | {c:.2f} |")
print()
for side, name in (("embedded", "embedded"), ("pg", "Mosquitto + PostgreSQL")):
    if any(load(side, r) for r in rates):
        b = best[side]
        print(f"{name}: highest step passed (with every lower one): {b:,} msg/s"
              + (f" = {b*30:,} devices at 1 msg/30 s, {b*60:,} at 1 msg/60 s" if b else ""))
if int(probe) > 0:
    print()
    print(f"Connections probe: {probe} devices, one MQTT connection each, one message per 30 s of real time:")
    print("| server | achieved msg/s | PUBACK missing | fixes sent | lost | late | PUBACK ms | alert ms | max lag | alerts missed / unexpected | server CPU µs/msg | passes | connection errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for side, name in (("embedded", "embedded"), ("pg", "Mosquitto + PostgreSQL")):
        r = load(side, f"probe{probe}")
        if r is None:
            continue
        ce = r["load"]["connection_errors"] if "load" in r else "–"
        print(f"| {name} " + fmt(verdict(r)) + f" {ce} |")
print()
print("Database growth (all rows written by the steps above, provisioning included):")
print("| database | fixes | messages | size in use | bytes/fix all in | fixes + messages + device_timeline tables incl. indexes, bytes/fix |")
print("|---|---|---|---|---|---|")
for side, name in (("sqlite", "SQLite file"), ("postgres", "PostgreSQL database")):
    d = g.get(side)
    if not d or not d["fixes"]:
        continue
    t = d["tables"]
    core = sum(t.get(k, 0) for k in ("fixes", "messages", "device_timeline"))
    print(f"| {name} | {d['fixes']:,} | {d['messages']:,} | {d['bytes']/2**20:,.1f} MiB "
          f"| {d['bytes']/d['fixes']:.0f} | {core/d['fixes']:.0f} |")
    top = sorted(t.items(), key=lambda kv: -kv[1])[:6]
    print("|  | largest tables: " + ", ".join(f"{k} {v/2**20:.1f} MiB" for k, v in top) + " |||||")
if "sqlite" in g:
    print(f"SQLite files on disk: " + ", ".join(f"{k} {v/2**20:.1f} MiB" for k, v in g["sqlite"]["files"].items()))
json.dump({"best": best, "growth": g}, open(os.path.join(out, "summary.json"), "w"))
EOF
}

if [[ -n $SUMMARIZE ]]; then
	OUT=$SUMMARIZE
	RATES=$(cd "$OUT" && ls embedded-*.json pg-*.json 2>/dev/null | sed -E 's/^[a-z]+-([0-9]+)\.json$/\1/;t;d' | sort -nu | tr '\n' ' ' || true)
	PROBE=$(cd "$OUT" && ls embedded-probe*.json 2>/dev/null | sed -E 's/embedded-probe([0-9]+)\.json/\1/' | head -1 || true)
	PROBE=${PROBE:-0}
	summarize
	exit 0
fi

for t in cargo curl psql python3; do
	command -v "$t" >/dev/null || die "missing tool: $t"
done
python3 -c 'import sqlite3' || die "python3 lacks sqlite3"

if [[ $BUILD == 1 ]]; then
	log "building release binaries (cargo build --release -p waypoint -p firmware-sim)"
	(cd "$ROOT" && cargo build --release -p waypoint -p firmware-sim --quiet) || die "build failed"
fi
BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release
WP=$BIN/waypoint SIM=$BIN/firmware-sim
[[ -x $WP && -x $SIM ]] || die "no release binaries in $BIN (drop --no-build or set CARGO_TARGET_DIR)"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/wp-embedded-bench.XXXXXX")
[[ -n $OUT ]] && mkdir -p "$OUT"
OUT=${OUT:-$WORK}
PGDB="wp_embbench_$$"
PGURL="$PG_BASE/$PGDB"
PIDS=()
cleanup() {
	local rc=$?
	for p in "${PIDS[@]}"; do
		kill -INT "$p" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.2; done
		kill -KILL "$p" 2>/dev/null || true
	done
	if [[ $KEEP == 0 ]]; then
		psql -q "$PG_BASE/postgres" -c "DROP DATABASE IF EXISTS $PGDB WITH (FORCE)" >/dev/null 2>&1 || true
		[[ $OUT == "$WORK" ]] || cp "$WORK"/*.log "$OUT"/ 2>/dev/null || true
		rm -rf "$WORK"
	else
		log "kept $WORK and database $PGDB"
	fi
	exit $rc
}
trap cleanup EXIT INT TERM

free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

wait_ready() { # name http-port pid
	for _ in $(seq 150); do
		curl -fsS "http://127.0.0.1:$2/readyz" >/dev/null 2>&1 && return 0
		kill -0 "$3" 2>/dev/null || die "$1 server exited during start-up (see $WORK/$1.log)"
		sleep 0.2
	done
	die "$1 server not ready after 30 s (see $WORK/$1.log)"
}

# Server settings common to both sides: the defaults (4 shards, batches of
# 1 000 fixes or 10 ms, Receive Maximum 5 000).
LOGF="warn,waypoint::broker=warn"

if [[ $ONLY != pg ]]; then
	E_MQTT=$(free_port) E_HTTP=$(free_port)
	DATA=$WORK/data
	# Up to three starts: rumqttd 0.20 can panic in its listener thread when
	# the start-up probe's second CONNECT reuses the first one's client id
	# (seen here about once in six starts under load; see BENCHMARKS.md).
	for attempt in 1 2 3; do
		WAYPOINT_LOG=$LOGF "$WP" serve --embedded --data-dir "$DATA" --mqtt-port "$E_MQTT" \
			--http-addr "127.0.0.1:$E_HTTP" $EMB_ARGS >"$WORK/embedded.log" 2>&1 &
		E_PID=$!
		for _ in $(seq 150); do
			curl -fsS "http://127.0.0.1:$E_HTTP/readyz" >/dev/null 2>&1 && break
			kill -0 "$E_PID" 2>/dev/null || break
			sleep 0.2
		done
		kill -0 "$E_PID" 2>/dev/null && break
		cp "$WORK/embedded.log" "$WORK/embedded-failed-start-$attempt.log"
		log "embedded server exited during start-up (attempt $attempt): $(grep -m1 -E 'panicked|Error|error:' "$WORK/embedded.log" || true)"
		E_MQTT=$(free_port) E_HTTP=$(free_port)
	done
	PIDS+=("$E_PID")
	wait_ready embedded "$E_HTTP" "$E_PID"
	E_TOKEN=$("$WP" tokens create --role admin --label embedded-bench --data-dir "$DATA" 2>/dev/null)
	log "embedded server: MQTT 127.0.0.1:$E_MQTT, HTTP 127.0.0.1:$E_HTTP, data $DATA (pid $E_PID)"
fi
if [[ $ONLY != embedded ]]; then
	P_HTTP=$(free_port)
	PREFIX="embbench$$/"
	psql -q "$PG_BASE/postgres" -c "CREATE DATABASE $PGDB" >/dev/null || die "cannot create $PGDB"
	WAYPOINT_LOG=$LOGF "$WP" serve --database-url "$PGURL" --mqtt-url "$MQTT_BASE" \
		--mqtt-client-id "waypoint-embbench-$$" --topic-prefix "$PREFIX" \
		--http-addr "127.0.0.1:$P_HTTP" >"$WORK/pg.log" 2>&1 &
	P_PID=$!
	PIDS+=("$P_PID")
	wait_ready pg "$P_HTTP" "$P_PID"
	P_TOKEN=$("$WP" tokens create --role admin --label embedded-bench --database-url "$PGURL" 2>/dev/null)
	log "baseline server: $MQTT_BASE (topics under $PREFIX), PostgreSQL $PGURL, HTTP 127.0.0.1:$P_HTTP (pid $P_PID)"
fi

# CPU time (user + system, clock ticks) a process has used so far.
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Fixes of one run (id prefix, boot) in the embedded server's SQLite file.
sqlite_stored() { # id-prefix boot
	python3 - "$DATA/waypoint.db" "$1" "$2" <<'EOF'
import sqlite3, sys
db, prefix, boot = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
print(c.execute("SELECT count(*) FROM fixes f JOIN devices d ON d.device_key = f.device_key "
                "WHERE d.device_id LIKE ? AND f.boot = ?", (prefix + "%", boot)).fetchone()[0])
EOF
}

# One firmware-sim run. side: embedded|pg; writes $OUT/<side>-<rate>.json.
run_step() { # side rate devices connections tag
	local side=$1 rate=$2 devices=$3 conns=$4 tag=$5
	local idp="e$$${tag}${side:0:1}-"
	local args=(run --devices "$devices" --connections "$conns" --interval "$INTERVAL"
		--fixes-per-message "$FPM" --rate "$rate" --duration "$DURATION" --id-prefix "$idp"
		--settle 30 --no-progress --json --report "$OUT/$side-$tag.json")
	if [[ $side == embedded ]]; then
		args+=(--broker "mqtt://127.0.0.1:$E_MQTT" --api-url "http://127.0.0.1:$E_HTTP"
			--api-token "$E_TOKEN" --metrics-url "http://127.0.0.1:$E_HTTP/metrics")
	else
		args+=(--broker "$MQTT_BASE" --topic-prefix "$PREFIX" --client-id "sim-embbench-$$"
			--api-url "http://127.0.0.1:$P_HTTP" --api-token "$P_TOKEN"
			--metrics-url "http://127.0.0.1:$P_HTTP/metrics" --database-url "$PGURL")
	fi
	log "$side: $rate msg/s, $devices devices over $conns connections, ${DURATION}s"
	local rc=0 pid=${E_PID:-} cpu0 cpu
	[[ $side == pg ]] && pid=$P_PID
	cpu0=$(cpu_ticks "$pid")
	"$SIM" "${args[@]}" >"$WORK/$side-$tag.stdout" 2>"$WORK/$side-$tag.err" || rc=$?
	cpu=$(($(cpu_ticks "$pid") - cpu0))
	[[ $rc -le 1 && -s $OUT/$side-$tag.json ]] || {
		tail -5 "$WORK/$side-$tag.err" >&2
		echo "{\"error\": \"firmware-sim exit $rc\"}" >"$OUT/$side-$tag.json"
		return 0
	}
	python3 - "$OUT/$side-$tag.json" "$cpu" "$(getconf CLK_TCK)" <<'EOF'
import json, sys
p, ticks, hz = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = json.load(open(p))
r["server_cpu_s"] = ticks / hz
json.dump(r, open(p, "w"))
EOF
	if [[ $side == embedded ]]; then
		# firmware-sim counts stored fixes in PostgreSQL only: count them in the
		# SQLite file, waiting up to 30 s for the server to catch up.
		local boot sent n=0 waited=0
		boot=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["fleet"]["boot"])' "$OUT/$side-$tag.json")
		sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["load"]["fixes_sent"])' "$OUT/$side-$tag.json")
		while :; do
			n=$(sqlite_stored "$idp" "$boot")
			[[ $n -ge $sent || $waited -ge 30 ]] && break
			sleep 1 && waited=$((waited + 1))
		done
		python3 - "$OUT/$side-$tag.json" "$n" "$waited" <<'EOF'
import json, sys
p, n, waited = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
r = json.load(open(p))
r["load"]["fixes_stored"] = n
r["stored_after_extra_wait_s"] = waited
json.dump(r, open(p, "w"))
EOF
	fi
}

STEP=0
for rate in $RATES; do
	STEP=$((STEP + 1))
	order="embedded pg"
	((STEP % 2 == 0)) && order="pg embedded"
	for side in $order; do
		[[ -n $ONLY && $side != "$ONLY" ]] && continue
		run_step "$side" "$rate" "$DEVICES" "$CONNECTIONS" "$rate"
	done
done
if [[ $PROBE -gt 0 ]]; then
	# One connection per device, each device once per 30 s of real time.
	pr=$(python3 -c "print(max(1, round($PROBE / 30, 1)))")
	SAVE_INTERVAL=$INTERVAL
	INTERVAL=30
	for side in embedded pg; do
		[[ -n $ONLY && $side != "$ONLY" ]] && continue
		run_step "$side" "$pr" "$PROBE" "$PROBE" "probe$PROBE"
	done
	INTERVAL=$SAVE_INTERVAL
fi

# Database growth: logical size (pages in use, WAL included) per table and
# all in, against the rows stored.
GROWTH=$OUT/growth.json
python3 - "${DATA:-}" "$PGURL" "$ONLY" >"$GROWTH" <<'EOF'
import json, os, sqlite3, subprocess, sys
data, pgurl, only = sys.argv[1], sys.argv[2], sys.argv[3]
out = {}
if only != "pg" and data:
    db = os.path.join(data, "waypoint.db")
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    page = c.execute("PRAGMA page_size").fetchone()[0]
    pages = c.execute("PRAGMA page_count").fetchone()[0]
    free = c.execute("PRAGMA freelist_count").fetchone()[0]
    per = {}
    for name, tbl, size in c.execute(
        "SELECT d.name, COALESCE(m.tbl_name, d.name), SUM(d.pgsize) FROM dbstat d "
        "LEFT JOIN sqlite_master m ON m.name = d.name GROUP BY d.name"):
        per[tbl] = per.get(tbl, 0) + size
    files = {f: os.path.getsize(os.path.join(data, f)) for f in os.listdir(data)}
    out["sqlite"] = {
        "bytes": (pages - free) * page, "files": files, "tables": per,
        "fixes": c.execute("SELECT count(*) FROM fixes").fetchone()[0],
        "messages": c.execute("SELECT count(*) FROM messages").fetchone()[0],
    }
if only != "embedded":
    q = lambda sql: subprocess.run(["psql", "-qAt", pgurl, "-c", sql], check=True,
                                   capture_output=True, text=True).stdout.strip()
    per = {}
    for line in q("SELECT relname, pg_total_relation_size(oid) FROM pg_class "
                  "WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace").splitlines():
        name, size = line.split("|")
        per[name] = int(size)
    out["postgres"] = {
        "bytes": int(q("SELECT pg_database_size(current_database())")), "tables": per,
        "fixes": int(q("SELECT count(*) FROM fixes")),
        "messages": int(q("SELECT count(*) FROM messages")),
    }
print(json.dumps(out))
EOF

summarize
