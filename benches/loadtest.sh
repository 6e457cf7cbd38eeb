#!/usr/bin/env bash
# End-to-end load benchmark: firmware-sim against (a) Mosquitto alone and
# (b) the whole Waypoint pipeline behind the same broker, in open-loop steps,
# then a recovery scenario (a fleet's backlog published while Waypoint is
# down). Writes every report, charts and a summary to benches/results/.
#
#   benches/loadtest.sh            # full run (≈ 20–25 min on the 2-core machine)
#   benches/loadtest.sh --quick    # short smoke run (≈ 2 min)
#   benches/loadtest.sh --help
#
# It starts its own Mosquitto (deploy/mosquitto.conf with only paths and
# listener ports rewritten, as tests/common/broker.rs does) and its own
# Waypoint processes; it uses the shared PostgreSQL (127.0.0.1:5432, user
# postgres) with fresh databases (one per Waypoint step, one for the
# recovery) that it drops at the end. It never stops or reconfigures the
# machine's own Mosquitto or PostgreSQL service.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
HERE="$ROOT/benches/loadtest"

usage() {
	cat <<'EOF'
Usage: benches/loadtest.sh [--quick] [options]

  --quick               fewer, shorter steps, a smaller fleet and backlog
  --steps "R1 R2 ..."   offered rates, msg/s, ascending (default: 2500 5000 7500
                        10000 15000 20000 30000 40000 50000 60000; --quick 5000 20000).
                        A configuration stops after two steps in a row that it
                        does not sustain (higher ones would only pile up backlog).
  --duration S          seconds of load per step (default 30; --quick 10)
  --devices N           supervisees per step fleet (default 20000; --quick 5000)
  --connections N       publishing MQTT connections (default 4)
  --recovery-devices N  supervisees in the recovery fleet (default 96150: with the
                        victims' devices ≈ 100 000 devices, ≈ 1 000 000 messages;
                        --quick 10000)
  --skip-broker | --skip-waypoint | --skip-recovery
  --no-build            use the existing target/release binaries
  --out DIR             results directory (default benches/results/loadtest-<date>[-quick])
  --pg URL              PostgreSQL server URL without database
                        (default postgres://postgres@127.0.0.1:5432)
  --keep                keep the databases and the work directory (logs) afterwards
EOF
}

die() {
	echo "loadtest: $*" >&2
	exit 2
}
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

QUICK=0 STEPS="" DURATION="" DEVICES="" CONNECTIONS=4 REC_DEVICES="" OUT=""
SKIP_BROKER=0 SKIP_WAYPOINT=0 SKIP_RECOVERY=0 BUILD=1 KEEP=0
PG_BASE="postgres://postgres@127.0.0.1:5432"
while [[ $# -gt 0 ]]; do
	case "$1" in
	--quick) QUICK=1 ;;
	--steps) STEPS=${2:?--steps needs a value} && shift ;;
	--duration) DURATION=${2:?--duration needs a value} && shift ;;
	--devices) DEVICES=${2:?--devices needs a value} && shift ;;
	--connections) CONNECTIONS=${2:?--connections needs a value} && shift ;;
	--recovery-devices) REC_DEVICES=${2:?--recovery-devices needs a value} && shift ;;
	--skip-broker) SKIP_BROKER=1 ;;
	--skip-waypoint) SKIP_WAYPOINT=1 ;;
	--skip-recovery) SKIP_RECOVERY=1 ;;
	--no-build) BUILD=0 ;;
	--out) OUT=${2:?--out needs a value} && shift ;;
	--pg) PG_BASE=${2:?--pg needs a value} && shift ;;
	--keep) KEEP=1 ;;
	-h | --help) usage && exit 0 ;;
	*) usage >&2 && die "unknown option $1" ;;
	esac
	shift
done

if [[ $QUICK == 1 ]]; then
	: "${STEPS:=5000 20000}" "${DURATION:=10}" "${DEVICES:=5000}" "${REC_DEVICES:=10000}"
else
	: "${STEPS:=2500 5000 7500 10000 15000 20000 30000 40000 50000 60000}" "${DURATION:=30}" "${DEVICES:=20000}" "${REC_DEVICES:=96150}"
fi
INTERVAL=60
# Recovery: every device's 10-minute backlog (one message a minute) is
# published while Waypoint is down, at this rate.
REC_MINUTES=10
REC_RATE=20000
# A step's lag is bounded when everything sent was delivered (broker) or
# stored (Waypoint) within this many seconds after the load ended and the
# lag did not grow through the step (benches/loadtest/analyze.py).
SETTLE_LIMIT_S=5

# --- Tools ------------------------------------------------------------------
need() {
	command -v "$1" >/dev/null 2>&1 || die "missing tool: $1 ($2)"
}
need cargo "install Rust: https://rustup.rs"
need mosquitto "apt-get install mosquitto"
need mosquitto_passwd "apt-get install mosquitto"
need openssl "apt-get install openssl"
need psql "apt-get install postgresql-client"
need pg_isready "apt-get install postgresql-client"
need curl "apt-get install curl"
need python3 "apt-get install python3"

PG_USER=postgres
[[ $PG_BASE == *@* ]] && PG_USER=${PG_BASE#*://} && PG_USER=${PG_USER%%@*} && PG_USER=${PG_USER%%:*}
PG_HOSTPORT=${PG_BASE#*@}
PG_HOSTPORT=${PG_HOSTPORT#*://}
PG_HOSTPORT=${PG_HOSTPORT%%/*}
PG_HOST=${PG_HOSTPORT%%:*}
PG_PORT=${PG_HOSTPORT##*:}
[[ $PG_PORT == "$PG_HOSTPORT" ]] && PG_PORT=5432
pg_isready -q -h "$PG_HOST" -p "$PG_PORT" ||
	die "PostgreSQL does not answer at $PG_HOST:$PG_PORT (give --pg URL)"

# --- Build ------------------------------------------------------------------
if [[ $BUILD == 1 ]]; then
	log "building release binaries (cargo build --release --workspace --bins)"
	(cd "$ROOT" && cargo build --release --workspace --bins --quiet) || die "build failed"
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
WAYPOINT="$TARGET_DIR/release/waypoint"
SIM="$TARGET_DIR/release/firmware-sim"
[[ -x $WAYPOINT && -x $SIM ]] || die "no release binaries in $TARGET_DIR/release (run without --no-build)"

# --- Work area, results, cleanup -------------------------------------------
STAMP=$(date +%Y%m%d-%H%M)
SUFFIX=""
[[ $QUICK == 1 ]] && SUFFIX=-quick
[[ -n $OUT ]] || OUT="$ROOT/benches/results/loadtest-$STAMP$SUFFIX"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/waypoint-loadtest.XXXXXX")
# One fresh database per Waypoint step and one for the recovery (dropped at
# the end): each server starts with only its own fleet provisioned.
DB_PREFIX="waypoint_loadtest_$(date +%Y%m%d%H%M%S)_$$"
DBS=()
BROKER_PID="" WAYPOINT_PID="" SIM_PID="" SCRAPER_PID=""

psql_q() { psql -X -q -t -A -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" "$@"; }

stop_pid() { # pid, seconds to wait after TERM before KILL
	local pid=$1 wait_s=${2:-30}
	[[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
	kill -TERM "$pid" 2>/dev/null || true
	for ((i = 0; i < wait_s * 10; i++)); do
		kill -0 "$pid" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$pid" 2>/dev/null; then
		echo "loadtest: process $pid did not stop in ${wait_s} s; killing it" >&2
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" 2>/dev/null || true
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	stop_pid "$SCRAPER_PID" 2
	stop_pid "$SIM_PID" 5
	stop_pid "$WAYPOINT_PID" 30
	stop_pid "$BROKER_PID" 10
	if [[ $KEEP == 1 ]]; then
		echo "loadtest: kept databases ${DBS[*]:-(none)} and work directory $WORK" >&2
	else
		for db in "${DBS[@]}"; do
			psql_q -d postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 ||
				echo "loadtest: could not drop database $db" >&2
		done
		if [[ $rc == 0 ]]; then
			rm -rf "$WORK"
		else
			echo "loadtest: failed; logs kept in $WORK" >&2
		fi
	fi
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# A free loopback TCP port (asked of the OS, then released).
free_port() {
	python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
wait_port() { # port, seconds, what
	for ((i = 0; i < $2 * 10; i++)); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	die "$3 did not open port $1 within $2 s"
}

# --- Broker -------------------------------------------------------------------
BROKER_PORT=$(free_port)
TLS_PORT=$(free_port)
while [[ $TLS_PORT == "$BROKER_PORT" ]]; do TLS_PORT=$(free_port); done
SERVER_USER=waypoint-server SERVER_PASS="server-$RANDOM$RANDOM"
LT_USER=loadtest LT_PASS="loadtest-$RANDOM$RANDOM"

start_broker() {
	local d="$WORK/broker"
	mkdir -p "$d"
	cp "$ROOT/deploy/waypoint.acl" "$d/waypoint.acl"
	# The load-test user publishes every device's telemetry from shared
	# connections, drains it in the broker-only baseline, and reads alerts.
	cat >>"$d/waypoint.acl" <<'EOF'

# Added by benches/loadtest.sh (temporary copy only).
user loadtest
topic readwrite em/v1/devices/+/telemetry
topic read em/v1/alerts/#
EOF
	openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
		-keyout "$d/server.key" -out "$d/server.crt" >/dev/null 2>&1 ||
		die "openssl could not create the broker's test certificate"
	mosquitto_passwd -c -b "$d/passwd" "$SERVER_USER" "$SERVER_PASS"
	mosquitto_passwd -b "$d/passwd" "$LT_USER" "$LT_PASS"
	sed -e "s|^listener 1883 127.0.0.1|listener $BROKER_PORT 127.0.0.1|" \
		-e "s|^listener 8883\$|listener $TLS_PORT 127.0.0.1|" \
		-e "s|/var/lib/mosquitto/|$d/|" \
		-e "s|/etc/mosquitto/certs/server.crt|$d/server.crt|" \
		-e "s|/etc/mosquitto/certs/server.key|$d/server.key|" \
		-e "s|/etc/mosquitto/certs/ca.crt|$d/server.crt|" \
		-e "s|/etc/mosquitto/passwd|$d/passwd|" \
		-e "s|/etc/mosquitto/waypoint.acl|$d/waypoint.acl|" \
		"$ROOT/deploy/mosquitto.conf" >"$d/mosquitto.conf"
	grep -q "^listener $BROKER_PORT 127.0.0.1" "$d/mosquitto.conf" ||
		die "deploy/mosquitto.conf no longer has 'listener 1883 127.0.0.1'; update this script"
	# Running as root: keep it from switching to a user that cannot read $d.
	[[ $(id -u) == 0 ]] && echo "user root" >>"$d/mosquitto.conf"
	mosquitto -c "$d/mosquitto.conf" >"$WORK/mosquitto.log" 2>&1 &
	BROKER_PID=$!
	wait_port "$BROKER_PORT" 10 "mosquitto (log: $WORK/mosquitto.log)"
	log "mosquitto $(mosquitto -h 2>/dev/null | head -1 | awk '{print $3}') on 127.0.0.1:$BROKER_PORT (pid $BROKER_PID)"
}

# --- Waypoint ---------------------------------------------------------------
HTTP_PORT=$(free_port)
new_db() { # name suffix; sets DB_URL (created and migrated)
	local name="${DB_PREFIX}_$1"
	DBS+=("$name")
	DB_URL="$PG_BASE/$name"
	"$WAYPOINT" migrate --database-url "$DB_URL" >/dev/null || die "cannot create database $DB_URL"
}
drop_db() { # the database of DB_URL, unless --keep
	[[ $KEEP == 1 ]] && return 0
	psql_q -d postgres -c "DROP DATABASE IF EXISTS ${DB_URL##*/} WITH (FORCE)" >/dev/null 2>&1 || true
}
start_waypoint() { # client id, log name, [session expiry s]; serves DB_URL
	local id=$1 name=$2 expiry=${3:-86400}
	WP_LOGFILE="$WORK/waypoint-$name.log"
	WAYPOINT_LOG=info,sqlx=warn "$WAYPOINT" serve \
		--database-url "$DB_URL" \
		--mqtt-url "mqtt://$SERVER_USER:$SERVER_PASS@127.0.0.1:$BROKER_PORT" \
		--http-addr "127.0.0.1:$HTTP_PORT" \
		--mqtt-client-id "$id" \
		--session-expiry-secs "$expiry" >"$WP_LOGFILE" 2>&1 &
	WAYPOINT_PID=$!
	WAYPOINT_STARTED=$(date +%s.%N)
	for ((i = 0; i < 1200; i++)); do
		if curl -fsS -o /dev/null "http://127.0.0.1:$HTTP_PORT/readyz" 2>/dev/null; then
			WAYPOINT_READY_S=$(python3 -c "import time; print(round(time.time() - $WAYPOINT_STARTED, 2))")
			return 0
		fi
		kill -0 "$WAYPOINT_PID" 2>/dev/null || {
			tail -20 "$WP_LOGFILE" >&2
			die "waypoint exited during start (log: $WP_LOGFILE)"
		}
		sleep 0.1
	done
	tail -20 "$WP_LOGFILE" >&2
	die "waypoint not ready within 120 s (log: $WP_LOGFILE)"
}
stop_waypoint() {
	stop_pid "$WAYPOINT_PID" 60
	WAYPOINT_PID=""
}
acked_total() { # messages Waypoint acknowledged since it started
	curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" 2>/dev/null |
		awk '$1 == "waypoint_messages_acked_total" { printf "%d\n", $2; found = 1 } END { if (!found) print -1 }'
}
# Once a second, the server's own counters (received, acked, duplicates,
# reconnects, queue depths) into a file, for diagnosis.
start_scraper() { # output file
	(
		while :; do
			echo "# t=$(date +%s.%N)"
			curl -fsS "http://127.0.0.1:$HTTP_PORT/metrics" 2>/dev/null |
				grep -E '^waypoint_(messages_(received|acked|duplicate)_total|mqtt_connects_total|queue_depth|oldest_unacked_seconds|fixes_stored_total)[{ ]' || true
			sleep 1
		done
	) >"$1" 2>/dev/null &
	SCRAPER_PID=$!
}
stop_scraper() {
	stop_pid "$SCRAPER_PID" 2
	SCRAPER_PID=""
}
# Waits until Waypoint has acknowledged `want` messages (bounded), so a
# step's backlog never spills into the next one.
wait_acked() { # want, max seconds
	local want=$1 max=$2 n=0
	for ((i = 0; i < max; i++)); do
		n=$(acked_total)
		((n >= want)) && return 0
		sleep 1
	done
	log "  waypoint acknowledged $n of $want messages after ${max} s more; moving on"
}

# Whether a step sustained its rate (benches/loadtest/analyze.py); counts
# failures in a row in FAILS.
verdict() { # report file
	local v
	v=$(python3 "$HERE/analyze.py" --verdict "$1" "$SETTLE_LIMIT_S")
	echo "    -> $v" >&2
	if [[ $v == sustained ]]; then FAILS=0; else FAILS=$((FAILS + 1)); fi
}

# --- The simulator ------------------------------------------------------------
# Runs firmware-sim in the background (so a signal to this script can stop
# it) and returns its exit code: 0 pass, 1 the run failed its checks, 2 error.
sim() {
	"$SIM" "$@" &
	SIM_PID=$!
	local rc=0
	wait "$SIM_PID" || rc=$?
	SIM_PID=""
	return "$rc"
}
sim_common=(--broker "mqtt://127.0.0.1:BROKER_PORT" --username "$LT_USER" --password "$LT_PASS"
	--alerts-username "$LT_USER" --alerts-password "$LT_PASS"
	--interval "$INTERVAL" --connections "$CONNECTIONS" --no-progress --waypoint-bin "$WAYPOINT")

start_broker
sim_common=("${sim_common[@]/BROKER_PORT/$BROKER_PORT}")
log "results in $OUT; databases ${DB_PREFIX}_*"

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }
cat >"$OUT/run.json" <<EOF
{
  "started": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "command": "benches/loadtest.sh${SUFFIX/-/ --}",
  "quick": $([[ $QUICK == 1 ]] && echo true || echo false),
  "steps": [$(echo "$STEPS" | xargs | tr ' ' ',')],
  "duration_s": $DURATION,
  "devices": $DEVICES,
  "interval_s": $INTERVAL,
  "connections": $CONNECTIONS,
  "settle_limit_s": $SETTLE_LIMIT_S,
  "recovery_devices": $REC_DEVICES,
  "recovery_minutes": $REC_MINUTES,
  "recovery_rate": $REC_RATE,
  "machine": "$(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB, $(uname -sr)",
  "mosquitto": "$(mosquitto -h 2>/dev/null | head -1)",
  "postgres": "$(psql_q -d postgres -c 'SHOW server_version' 2>/dev/null)",
  "git": "$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null)$(cd "$ROOT" && git diff --quiet HEAD 2>/dev/null || echo +dirty)",
  "loadavg_start": "$(loadavg)"
}
EOF

# --- (a) broker only ------------------------------------------------------------
if [[ $SKIP_BROKER == 0 ]]; then
	FAILS=0
	for rate in $STEPS; do
		((FAILS < 2)) || { log "broker only: $rate msg/s skipped (two steps in a row not sustained)"; continue; }
		log "broker only: $rate msg/s for $DURATION s ($DEVICES devices; load average $(loadavg))"
		rc=0
		sim run "${sim_common[@]}" --drain --no-provision --devices "$DEVICES" \
			--rate "$rate" --duration "$DURATION" --id-prefix "b$rate-" --client-id "lt-b$rate" \
			--settle 60 --report "$OUT/broker-$rate.json" >"$OUT/broker-$rate.txt" 2>&1 || rc=$?
		((rc <= 1)) || { cat "$OUT/broker-$rate.txt" >&2; die "firmware-sim error (exit $rc)"; }
		grep -E '^(load|drained|PUBACK|PASS|FAIL)' "$OUT/broker-$rate.txt" | sed 's/^/    /' >&2
		verdict "$OUT/broker-$rate.json"
	done
fi

# --- (b) the Waypoint pipeline ------------------------------------------------------
if [[ $SKIP_WAYPOINT == 0 ]]; then
	FAILS=0
	for rate in $STEPS; do
		((FAILS < 2)) || { log "waypoint: $rate msg/s skipped (two steps in a row not sustained)"; continue; }
		# Provisioned before the server starts, so it serves the step from its
		# first message with the whole configuration loaded (provisioning
		# inside `firmware-sim run` races the server's rules reload: see
		# BENCHMARKS.md). A fresh database and server per step (own client id,
		# short session expiry): no step's backlog or state leaks into the next.
		new_db "w$rate"
		fleet="$WORK/fleet-w$rate.json" scen="$WORK/scenario-w$rate.json"
		"$SIM" generate --devices "$DEVICES" --interval "$INTERVAL" --id-prefix "w$rate-" \
			--rate "$rate" --duration "$DURATION" --save-fleet "$fleet" --scenario-out "$scen" \
			2>"$WORK/generate-w$rate.txt" || die "firmware-sim generate failed: $(cat "$WORK/generate-w$rate.txt")"
		t0=$(date +%s)
		"$WAYPOINT" scenario load "$scen" --database-url "$DB_URL" >/dev/null ||
			die "provisioning the $rate msg/s fleet failed"
		start_waypoint "waypoint-lt-$rate" "step-$rate" 30
		log "waypoint: $rate msg/s for $DURATION s ($DEVICES devices provisioned in $(($(date +%s) - t0)) s; server ready in ${WAYPOINT_READY_S} s; load average $(loadavg))"
		start_scraper "$OUT/waypoint-$rate.metrics"
		rc=0
		sim run "${sim_common[@]}" --fleet-file "$fleet" --duration "$DURATION" --no-provision \
			--database-url "$DB_URL" --metrics-url "http://127.0.0.1:$HTTP_PORT/metrics" \
			--client-id "lt-w$rate" --settle 60 --report "$OUT/waypoint-$rate.json" \
			>"$OUT/waypoint-$rate.txt" 2>&1 || rc=$?
		((rc <= 1)) || { cat "$OUT/waypoint-$rate.txt" >&2; die "firmware-sim error (exit $rc)"; }
		grep -E '^(load|stored|PUBACK|alerts|PASS|FAIL)' "$OUT/waypoint-$rate.txt" | sed 's/^/    /' >&2
		sent=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['load']['sent'])" "$OUT/waypoint-$rate.json")
		wait_acked "$sent" 180
		verdict "$OUT/waypoint-$rate.json"
		stop_scraper
		stop_waypoint
		# Keep the server's warnings and errors with the results.
		grep -E ' (WARN|ERROR) ' "$WP_LOGFILE" | head -200 >"$OUT/waypoint-$rate.log" || true
		# Which personas the missed alerts' devices have (for the summary).
		python3 "$HERE/personas.py" "$fleet" "$OUT/waypoint-$rate.json" >"$OUT/waypoint-$rate.missed.json"
		drop_db
	done
fi

# --- Charts of the steps ----------------------------------------------------------
for rate in $STEPS; do
	ins=()
	[[ -f $OUT/broker-$rate.json ]] && ins+=(--input "$OUT/broker-$rate.json=broker only")
	[[ -f $OUT/waypoint-$rate.json ]] && ins+=(--input "$OUT/waypoint-$rate.json=Waypoint")
	((${#ins[@]})) && "$SIM" chart "${ins[@]}" --out "$OUT/step-$rate.svg" \
		--title "Offered $rate msg/s, $DEVICES devices, $DURATION s (open loop, QoS 1)"
done
for cfg in broker waypoint; do
	ins=()
	for rate in $STEPS; do
		[[ -f $OUT/$cfg-$rate.json ]] && ins+=(--input "$OUT/$cfg-$rate.json=$rate/s")
	done
	title=$([[ $cfg == broker ]] && echo "Broker only (drain subscriber)" || echo "Waypoint (stored, acked after commit)")
	((${#ins[@]})) && "$SIM" chart "${ins[@]}" --out "$OUT/$cfg-steps.svg" --title "$title: every step"
done

# --- (c) recovery -------------------------------------------------------------------
if [[ $SKIP_RECOVERY == 0 ]]; then
	# The window is REC_MINUTES of simulated time, so every device sends
	# REC_MINUTES messages; the run's --duration then sets the publish rate.
	rec_fleet="$WORK/recovery-fleet.json" rec_scen="$WORK/recovery-scenario.json"
	log "recovery: generating a fleet of $REC_DEVICES supervisees"
	"$SIM" generate --devices "$REC_DEVICES" --interval "$INTERVAL" --id-prefix rec- \
		--speed 10 --duration $((REC_MINUTES * 6)) --save-fleet "$rec_fleet" \
		--scenario-out "$rec_scen" 2>"$WORK/generate.txt" || die "firmware-sim generate failed: $(cat "$WORK/generate.txt")"
	# Victims' devices come on top of the supervisees.
	rec_total=$(python3 -c "import json, sys; print(len(json.load(open(sys.argv[1]))['devices']))" "$rec_scen")
	rec_duration=$(python3 -c "print(round($rec_total * $REC_MINUTES / $REC_RATE, 3))")
	# An offline session holds at most max_queued_messages (the rest is
	# dropped by the broker, by design): the backlog must fit.
	max_q=$(awk '$1 == "max_queued_messages" {print $2}' "$WORK/broker/mosquitto.conf")
	if [[ -n $max_q ]] && ((rec_total * REC_MINUTES > max_q)); then
		die "the backlog ($rec_total devices × $REC_MINUTES messages) exceeds max_queued_messages $max_q of deploy/mosquitto.conf; lower --recovery-devices"
	fi
	new_db recovery
	t0=$(date +%s.%N)
	"$WAYPOINT" scenario load "$rec_scen" --database-url "$DB_URL" >"$WORK/recovery-provision.txt" ||
		die "provisioning the recovery fleet failed"
	provision_s=$(python3 -c "import time; print(round(time.time() - $t0, 1))")
	log "recovery: provisioned $rec_total devices in $provision_s s; starting Waypoint once for its session"
	start_waypoint waypoint-lt-recovery recovery-first
	stop_waypoint
	log "recovery: Waypoint stopped; publishing ≈ $((rec_total * REC_MINUTES)) messages at $REC_RATE msg/s"
	rc=0
	sim run "${sim_common[@]}" --fleet-file "$rec_fleet" --duration "$rec_duration" \
		--no-provision --no-alerts --client-id lt-rec --settle 120 \
		--report "$OUT/recovery-publish.json" >"$OUT/recovery-publish.txt" 2>&1 || rc=$?
	((rc <= 1)) || { cat "$OUT/recovery-publish.txt" >&2; die "firmware-sim error (exit $rc)"; }
	grep -E '^(load|broker|PASS|FAIL)' "$OUT/recovery-publish.txt" | sed 's/^/    /' >&2
	read -r rec_sent rec_fixes rec_boot < <(python3 -c "
import json, sys
r = json.load(open(sys.argv[1]))
print(r['load']['acked'], r['load']['fixes_sent'], r['fleet']['boot'])" "$OUT/recovery-publish.json")
	log "recovery: $rec_sent messages acknowledged by the broker; starting Waypoint"
	start_waypoint waypoint-lt-recovery recovery
	log "recovery: ready after ${WAYPOINT_READY_S} s; waiting for $rec_sent messages / $rec_fixes fixes"
	start_scraper "$OUT/recovery.metrics"
	python3 "$HERE/recovery.py" --metrics "http://127.0.0.1:$HTTP_PORT/metrics" \
		--sent "$rec_sent" --fixes "$rec_fixes" --boot "$rec_boot" --started "$WAYPOINT_STARTED" \
		--ready-s "$WAYPOINT_READY_S" --provision-s "$provision_s" --devices "$rec_total" \
		--psql "psql -X -q -t -A -h $PG_HOST -p $PG_PORT -U $PG_USER -d ${DB_URL##*/}" \
		--timeout 1800 --out "$OUT/recovery.json"
	stop_scraper
	stop_waypoint
	grep -E ' (WARN|ERROR) ' "$WP_LOGFILE" | head -200 >"$OUT/recovery-waypoint.log" || true
	drop_db
	"$SIM" chart --input "$OUT/recovery.json=Waypoint catching up" --out "$OUT/recovery.svg" \
		--title "Recovery: $rec_sent queued messages ($rec_total devices × $REC_MINUTES min); time since Waypoint's start"
fi

# --- Summary ----------------------------------------------------------------------
python3 - "$OUT/run.json" "$(loadavg)" <<'EOF'
import json, sys
p = sys.argv[1]
r = json.load(open(p))
r["loadavg_end"] = sys.argv[2]
json.dump(r, open(p, "w"), indent=2)
EOF
python3 "$HERE/analyze.py" "$OUT"
log "results: $OUT"
