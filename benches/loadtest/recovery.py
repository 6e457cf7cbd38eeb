#!/usr/bin/env python3
"""Times Waypoint catching up on a backlog (benches/loadtest.sh, recovery).

Polls the server's `waypoint_messages_acked_total` once a second until it
has acknowledged every queued message (it acks only after the commit), then
counts the stored fixes of the run's boot in the database to confirm. Writes
a JSON file whose `samples` series `firmware-sim chart` can draw.
"""

import argparse
import json
import subprocess
import sys
import time
import urllib.request


def acked(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("waypoint_messages_acked_total "):
                    return int(float(line.split()[1]))
    except OSError:
        return None
    return None


def stored(psql, boot):
    out = subprocess.run(
        psql.split() + ["-c", f"SELECT count(*) FROM fixes WHERE boot = {int(boot)}"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(out.stdout.strip())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--metrics", required=True)
    ap.add_argument("--sent", type=int, required=True, help="messages queued (broker PUBACKs)")
    ap.add_argument("--fixes", type=int, required=True, help="fixes in them to be stored")
    ap.add_argument("--boot", type=int, required=True)
    ap.add_argument("--started", type=float, required=True, help="epoch s Waypoint was started")
    ap.add_argument("--ready-s", type=float, required=True)
    ap.add_argument("--provision-s", type=float, default=None)
    ap.add_argument("--devices", type=int, default=None)
    ap.add_argument("--psql", required=True)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    samples = []
    last_n, last_t = 0, None
    all_acked_s = None
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        n = acked(a.metrics)
        t = time.time() - a.started
        if n is not None:
            rate = None if last_t is None else max(n - last_n, 0) / max(t - last_t, 1e-3)
            samples.append(
                {"t_s": round(t, 3), "delivered_per_s": rate, "lag": a.sent - n}
            )
            last_n, last_t = n, t
            if n >= a.sent:
                all_acked_s = t
                break
        time.sleep(1.0)

    # Acks follow commits, so all acked means all stored; the count confirms
    # it (and its time is an upper bound, a query later).
    fixes_stored = stored(a.psql, a.boot)
    while fixes_stored < a.fixes and time.time() < deadline:
        time.sleep(1.0)
        fixes_stored = stored(a.psql, a.boot)
    all_stored_s = time.time() - a.started if fixes_stored >= a.fixes else None

    catch_up = None
    if all_acked_s is not None:
        catch_up = round(a.sent / max(all_acked_s - a.ready_s, 1e-3))
    result = {
        "devices": a.devices,
        "messages_queued": a.sent,
        "messages_acked": last_n,
        "fixes_sent": a.fixes,
        "fixes_stored": fixes_stored,
        "provision_s": a.provision_s,
        "ready_s": a.ready_s,
        "all_acked_s": None if all_acked_s is None else round(all_acked_s, 1),
        "all_stored_s": None if all_stored_s is None else round(all_stored_s, 1),
        "catch_up_msgs_per_s": catch_up,
        "samples": samples,
    }
    with open(a.out, "w") as f:
        json.dump(result, f, indent=2)
    print(
        f"    recovery: ready {a.ready_s:.1f} s, all {a.sent} messages acked after "
        f"{result['all_acked_s']} s, fixes stored {fixes_stored}/{a.fixes} "
        f"(≈ {catch_up} msg/s catching up)",
        file=sys.stderr,
    )
    if all_acked_s is None or fixes_stored < a.fixes:
        print("    recovery: INCOMPLETE within the timeout", file=sys.stderr)


if __name__ == "__main__":
    main()
