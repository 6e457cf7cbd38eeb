#!/usr/bin/env python3
"""Summarises a benches/loadtest.sh results directory.

Usage: analyze.py RESULTS_DIR | analyze.py --verdict REPORT.json SETTLE_LIMIT_S

Reads run.json, broker-<rate>.json and waypoint-<rate>.json (firmware-sim
reports) and recovery.json; prints a markdown summary and writes it to
summary.md, with the numbers in summary.json.

A step *sustains* its offered rate when all of these hold:
  - the generator kept up: at most 1 % of the messages were sent more than
    100 ms after their scheduled time (the achieved rate itself is a few per
    cent under the offered one by design: devices that lose coverage or run
    flat stay silent for a while);
  - nothing lost: every publish got its PUBACK, and every message reached
    the drain subscriber (broker only) / every fix sent is in the database
    (Waypoint);
  - the lag stayed bounded: lag = sent - delivered (broker only: drained by
    the subscriber; Waypoint: acknowledged by Waypoint, which it does only
    after the commit) did not grow through the second half of the load
    (least-squares slope <= 5 % of the offered rate) and went back to zero
    within `settle_limit_s` (5 s) after the load ended.
The headline is the highest step a configuration sustains with every lower
step sustained too.
"""

import glob
import json
import os
import re
import sys


def slope(points):
    """Least-squares slope of (t, y) points."""
    n = len(points)
    if n < 3:
        return 0.0
    mt = sum(t for t, _ in points) / n
    my = sum(y for _, y in points) / n
    den = sum((t - mt) ** 2 for t, _ in points)
    return 0.0 if den == 0 else sum((t - mt) * (y - my) for t, y in points) / den


def step(path, settle_limit):
    r = json.load(open(path))
    load, samples = r["load"], r["samples"]
    offered, dur = load["target_rate"], load["duration_s"]
    during = [s for s in samples if 1.0 < s["t_s"] <= dur + 0.5]
    lagged = [(s["t_s"], s["lag"]) for s in samples if s.get("lag") is not None]
    in_load = [(t, l) for t, l in lagged if t <= dur + 0.5]
    second_half = [(t, l) for t, l in in_load if t >= dur / 2]
    growth = slope(second_half)
    end_lag = in_load[-1][1] if in_load else None
    max_lag = max((l for _, l in in_load), default=None)
    delivered = [s["delivered_per_s"] for s in during if s.get("delivered_per_s") is not None]
    delivered_rate = sum(delivered) / len(delivered) if delivered else None

    broker_only = load.get("drained") is not None
    if broker_only:
        lost = load["sent"] - load["drained"]
        unit = "messages"
    else:
        stored = load.get("fixes_stored")
        lost = None if stored is None else max(load["fixes_sent"] - stored, 0)
        unit = "fixes"
    lost_total = (lost if lost is not None else 0) + load["puback_missing"]

    # Time from the end of the load until the lag was back to zero.
    after = [(t, l) for t, l in lagged if t > dur]
    zero = next((t for t, l in after if l <= 0), None)
    all_in = lost is not None and lost <= 0 and load["puback_missing"] == 0
    if zero is not None:
        settle_s, settle_bound = max(zero - dur, 0.0), ""
    elif all_in:
        # The run ended as soon as everything was in, before a sample
        # could show it: the last sample (+1 s) bounds it.
        last = samples[-1]["t_s"] if samples else dur
        settle_s, settle_bound = max(last + 1.0 - dur, 0.0), "≤ "
    else:
        settle_s, settle_bound = None, ""

    kept_up = load["behind_schedule"] <= 0.01 * max(load["sent"], 1)
    bounded = (
        settle_s is not None
        and settle_s <= settle_limit
        and growth <= 0.05 * offered
    )
    sustained = kept_up and all_in and bounded
    v = r.get("alerts")
    alerts = None
    if v is not None:
        kinds = v.get("kinds", {})
        alerts = {
            "expected": sum(k["expected"] for k in kinds.values()),
            "raised": sum(k["raised"] for k in kinds.values()),
            "missed": sum(k["missed"] for k in kinds.values()),
            "unexpected": sum(k["unexpected"] for k in kinds.values()),
        }
    why = []
    if not kept_up:
        why.append("generator behind")
    if not all_in:
        why.append("losses" if lost else "not all in")
    if settle_s is None or settle_s > settle_limit:
        why.append("slow drain")
    if growth > 0.05 * offered:
        why.append("lag growing")
    server = scrape(path.replace(".json", ".metrics"))
    mm = path.replace(".json", ".missed.json")
    mismatch = json.load(open(mm)) if os.path.exists(mm) else None
    return {
        "server": server,
        "mismatch_sample": mismatch and {
            "missed": mismatch["missed_sample"], "unexpected": mismatch["unexpected_sample"]},
        "behind_schedule": load["behind_schedule"],
        "fixes_stored": load.get("fixes_stored"),
        "offered": offered,
        "achieved": load["achieved_rate"],
        "delivered_rate": delivered_rate,
        "sent": load["sent"],
        "fixes_sent": load["fixes_sent"],
        "devices": r["fleet"]["devices"] + r["fleet"]["victim_devices"],
        "lost": lost,
        "lost_unit": unit,
        "puback_missing": load["puback_missing"],
        "end_lag": end_lag,
        "max_lag": max_lag,
        "lag_growth_per_s": growth,
        "settle_s": settle_s,
        "settle_bound": settle_bound,
        "bounded": bounded,
        "sustained": sustained,
        "why_not": why,
        "puback_p50_ms": r["puback_latency"]["p50_ms"],
        "puback_p99_ms": r["puback_latency"]["p99_ms"],
        "alert_n": r["alert_latency"]["count"],
        "alert_p50_ms": r["alert_latency"]["p50_ms"],
        "alert_p99_ms": r["alert_latency"]["p99_ms"],
        "alerts": alerts,
        "failures": r.get("failures", []),
    }


def scrape(path):
    """Waypoint's own counters, scraped once a second during a step."""
    if not os.path.exists(path):
        return None
    rows, cur = [], None
    for line in open(path):
        if line.startswith("# t="):
            cur = {}
            rows.append(cur)
        elif cur is not None and line.strip():
            name, val = line.split()[0], line.split()[-1]
            try:
                cur[name] = float(val)
            except ValueError:
                pass
    rows = [r for r in rows if "waypoint_messages_received_total" in r]
    if not rows:
        return None
    last = rows[-1]
    unacked = lambda r: r["waypoint_messages_received_total"] - r.get("waypoint_messages_acked_total", 0)
    first_conn = [r for r in rows if r.get("waypoint_mqtt_connects_total", 1) <= 1]
    acked = last.get("waypoint_messages_acked_total", 0)
    return {
        # Received but not yet acknowledged, on the first connection (before
        # any redelivery): what the broker let be in flight to Waypoint,
        # whose Receive Maximum should cap it.
        "max_unacked_first_connection": int(max(map(unacked, first_conn), default=0)),
        "received": int(last["waypoint_messages_received_total"]),
        "acked": int(acked),
        # Publishes received per message acknowledged (1.0: no redelivery).
        "received_per_acked": last["waypoint_messages_received_total"] / acked if acked else None,
        "duplicates": int(last.get("waypoint_messages_duplicate_total", 0)),
        "reconnects": int(last.get("waypoint_mqtt_connects_total", 1)) - 1,
    }


def fmt(v, nd=0, suffix=""):
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.{nd}f}{suffix}".replace(",", " ")
    return f"{v:,}{suffix}".replace(",", " ")


def headline(steps):
    best = None
    for s in sorted(steps, key=lambda s: s["offered"]):
        if not s["sustained"]:
            break
        best = s
    return best


def main():
    if sys.argv[1] == "--verdict":
        # loadtest.sh asks after each step: "sustained" or "failed".
        st = step(sys.argv[2], float(sys.argv[3]))
        print("sustained" if st["sustained"] else "failed: " + ", ".join(st["why_not"]))
        return
    d = sys.argv[1]
    run = json.load(open(os.path.join(d, "run.json")))
    limit = run.get("settle_limit_s", 5)
    cfgs = {}
    for cfg in ("broker", "waypoint"):
        files = glob.glob(os.path.join(d, f"{cfg}-*.json"))
        files = [f for f in files if re.search(rf"{cfg}-\d+\.json$", f)]
        cfgs[cfg] = sorted((step(f, limit) for f in files), key=lambda s: s["offered"])
    out = []
    w = out.append
    w(f"Run {run['started']} ({run['command']}; git {run['git']}), {run['machine']}; "
      f"load average {run['loadavg_start']} at the start, {run.get('loadavg_end', '?')} at the end.")
    w("")
    w(f"Each step: {run['devices']} supervisees (+ victims' devices), one message of one fix "
      f"every {run['interval_s']} s of simulated time, accelerated to the offered rate, "
      f"{run['duration_s']} s of load, {run['connections']} publishing connections, QoS 1, JSON.")
    w("")
    for cfg, title in (("broker", "Broker only (drain subscriber)"), ("waypoint", "Waypoint")):
        steps = cfgs[cfg]
        if not steps:
            continue
        w(f"**{title}**")
        w("")
        if cfg == "broker":
            w("| offered msg/s | sent msg/s | drained msg/s | lag at end | lag growth /s | all drained after | lost msgs | PUBACK p50 / p99 ms | sustained |")
            w("|---|---|---|---|---|---|---|---|---|")
        else:
            w("| offered msg/s | sent msg/s | stored msg/s | lag at end | lag growth /s | all stored after | lost fixes | PUBACK p50 / p99 ms | alert p50 / p99 ms (n) | alerts expected / raised / missed / unexpected | server: max unacked (1st connection), reconnects, publishes received per message, duplicates | sustained |")
            w("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for s in steps:
            settle = "–" if s["settle_s"] is None else f"{s['settle_bound']}{s['settle_s']:.1f} s"
            lost = fmt(s["lost"]) + (f" (+{s['puback_missing']} no PUBACK)" if s["puback_missing"] else "")
            sus = "**yes**" if s["sustained"] else "no (" + ", ".join(s["why_not"]) + ")"
            row = [
                fmt(s["offered"]), fmt(s["achieved"]), fmt(s["delivered_rate"]),
                fmt(s["end_lag"]), fmt(s["lag_growth_per_s"]), settle, lost,
                f"{s['puback_p50_ms']:.1f} / {s['puback_p99_ms']:.1f}",
            ]
            if cfg == "waypoint":
                a = s["alerts"]
                row.append(f"{s['alert_p50_ms']:.0f} / {s['alert_p99_ms']:.0f} ({s['alert_n']})")
                row.append("–" if a is None else f"{a['expected']} / {a['raised']} / {a['missed']} / {a['unexpected']}")
                sv = s["server"]
                row.append("–" if sv is None else f"{fmt(sv['max_unacked_first_connection'])}, {sv['reconnects']}, {sv['received_per_acked']:.2f}, {fmt(sv['duplicates'])}")
            row.append(sus)
            w("| " + " | ".join(row) + " |")
        w("")
        notes = [
            (s["offered"], s["mismatch_sample"]) for s in steps
            if s.get("mismatch_sample") and (s["mismatch_sample"]["missed"] or s["mismatch_sample"]["unexpected"])
        ]
        if notes:
            w("Alert mismatches by kind/persona (the reports list a sample of at most 20 of each):")
            w("")
            for rate, m in notes:
                parts = []
                if m["missed"]:
                    parts.append("missed " + ", ".join(f"{k} ×{n}" for k, n in sorted(m["missed"].items())))
                if m["unexpected"]:
                    parts.append("unexpected " + ", ".join(f"{k} ×{n}" for k, n in sorted(m["unexpected"].items())))
                w(f"- {fmt(rate)} msg/s: " + "; ".join(parts))
            w("")
    hb, hw = headline(cfgs["broker"]), headline(cfgs["waypoint"])
    summary = {"broker_steps": cfgs["broker"], "waypoint_steps": cfgs["waypoint"]}
    if cfgs["broker"] or cfgs["waypoint"]:
        w("**Headline**: highest step sustained (with every lower step): broker only "
          f"{fmt(hb['offered']) if hb else 'none'} msg/s, Waypoint {fmt(hw['offered']) if hw else 'none'} msg/s"
          + (f"; ratio Waypoint / broker only = **{hw['offered'] / hb['offered']:.2f}**" if hb and hw else "")
          + ".")
        w("")
        summary["broker_sustained"] = hb and hb["offered"]
        summary["waypoint_sustained"] = hw and hw["offered"]
        summary["ratio"] = (hw["offered"] / hb["offered"]) if hb and hw else None
        # Alert latency at half of the sustained rates.
        for name, ref in (("broker-only", hb), ("Waypoint", hw)):
            if not ref or not cfgs["waypoint"]:
                continue
            half = ref["offered"] / 2
            cands = [s for s in cfgs["waypoint"] if s["offered"] <= half * 1.001]
            if not cands:
                w(f"No Waypoint step at or below half the {name} sustained rate ({fmt(half)} msg/s).")
                continue
            s = max(cands, key=lambda s: s["offered"])
            w(f"Alert latency at half the {name} sustained rate ({fmt(half)} msg/s; nearest step at or "
              f"below: {fmt(s['offered'])}): p50 {s['alert_p50_ms']:.0f} ms, p99 {s['alert_p99_ms']:.0f} ms "
              f"over {s['alert_n']} alerts ({'meets' if s['alert_n'] and s['alert_p99_ms'] <= 100 else 'misses'} "
              "the ≤ 100 ms p99 target).")
            summary[f"alert_at_half_{name}"] = {
                "rate": s["offered"], "p50_ms": s["alert_p50_ms"], "p99_ms": s["alert_p99_ms"], "n": s["alert_n"]}
        w("")
    rp = os.path.join(d, "recovery.json")
    if os.path.exists(rp):
        rc = json.load(open(rp))
        summary["recovery"] = {k: v for k, v in rc.items() if k != "samples"}
        sv = scrape(os.path.join(d, "recovery.metrics"))
        summary["recovery"]["server"] = sv
        w(f"**Recovery**: {fmt(rc['devices'])} devices' {run['recovery_minutes']}-minute backlog, "
          f"{fmt(rc['messages_queued'])} messages ({fmt(rc['fixes_sent'])} fixes) queued in the broker "
          f"while Waypoint was down. After its start: ready in {rc['ready_s']:.1f} s, every message "
          f"acknowledged after {fmt(rc['all_acked_s'], 1)} s, fixes stored {fmt(rc['fixes_stored'])} / "
          f"{fmt(rc['fixes_sent'])} (confirmed at {fmt(rc['all_stored_s'], 1)} s); "
          f"≈ {fmt(rc['catch_up_msgs_per_s'])} msg/s while catching up."
          + ("" if not sv else
             f" Server side: up to {fmt(sv['max_unacked_first_connection'])} messages received and not yet "
             f"acknowledged on its first connection, {sv['reconnects']} reconnects, "
             f"{sv['received_per_acked']:.1f} publishes received per message, {fmt(sv['duplicates'])} duplicates."))
        w("")
    charts = sorted(os.path.basename(p) for p in glob.glob(os.path.join(d, "*.svg")))
    if charts:
        w("Charts: " + ", ".join(f"`{c}`" for c in charts) + f" in `{os.path.relpath(d)}`.")
    text = "\n".join(out) + "\n"
    open(os.path.join(d, "summary.md"), "w").write(text)
    json.dump(summary, open(os.path.join(d, "summary.json"), "w"), indent=2)
    print(text)


if __name__ == "__main__":
    main()
