#!/usr/bin/env bash
# Long versions of the fault tests (tests/faults.rs): PostgreSQL stopped for
# 30 s, the server killed -9 several times, Mosquitto restarted several
# times, a larger alert storm for slow consumers. Each prints
#   <fault>: sent=… acked=… stored=… duplicates=… lost=…
# and fails on any loss or duplicate.
#
# Needs what the tests need: PostgreSQL on 127.0.0.1:5432 (trust, user
# postgres; a test database per test), Mosquitto installed (each test starts
# its own from deploy/mosquitto.conf), PostgreSQL's server binaries under
# /usr/lib/postgresql/<v>/bin (a throwaway cluster, run as the postgres user).
#
# Settings (environment): RATE (messages/s per device, 4 devices; default
# 100), PG_DOWN_SECS (30), KILLS (5), KILL_DOWN_SECS (5), BROKER_RESTARTS (3),
# BROKER_DOWN_SECS (5), ZONES (3000).
set -euo pipefail
cd "$(dirname "$0")/.."

export FAULTS_RATE="${RATE:-100}"
export FAULTS_PG_DOWN_SECS="${PG_DOWN_SECS:-30}"
export FAULTS_KILLS="${KILLS:-5}"
export FAULTS_KILL_DOWN_SECS="${KILL_DOWN_SECS:-5}"
export FAULTS_BROKER_RESTARTS="${BROKER_RESTARTS:-3}"
export FAULTS_BROKER_DOWN_SECS="${BROKER_DOWN_SECS:-5}"
export FAULTS_ZONES="${ZONES:-3000}"

# The tests run a private copy of target/debug/waypoint: build it right
# before, so the copy is this checkout's server.
cargo build --bin waypoint
set +e
cargo test --test faults -- --nocapture --test-threads 1 2>&1 |
    grep -E '^(test |kill|broker|PostgreSQL|recovered|after|slow consumers|test result)|panicked|assertion|left:|right:'
exit "${PIPESTATUS[0]}"
