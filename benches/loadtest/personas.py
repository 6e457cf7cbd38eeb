#!/usr/bin/env python3
"""Personas of the devices in a report's missed/unexpected alert samples.

Usage: personas.py FLEET.json REPORT.json  (prints JSON)

The report lists a sample (up to 20) of missed runs and unexpected alerts;
the fleet file (`firmware-sim generate --save-fleet`) tells each device's
persona, which is what explains most mismatches.
"""

import collections
import json
import sys


def main():
    fleet = json.load(open(sys.argv[1]))
    report = json.load(open(sys.argv[2]))
    persona = {}
    for d in fleet["devices"]:
        persona[d["device_id"]] = d["persona"]
        if d.get("victim"):
            persona[d["victim"][0]] = "victim_device"
    v = report.get("alerts") or {}
    missed = [
        {"device": dev, "kind": ep["kind"], "persona": persona.get(dev, "?")}
        for dev, ep in v.get("missed", [])
    ]
    unexpected = [
        {"device": a["device_id"], "kind": a["kind"], "persona": persona.get(a["device_id"], "?")}
        for a in v.get("unexpected", [])
    ]
    count = lambda xs: dict(collections.Counter(f"{x['kind']}/{x['persona']}" for x in xs))
    json.dump(
        {
            "missed_sample": count(missed),
            "unexpected_sample": count(unexpected),
            "missed": missed,
            "unexpected": unexpected,
        },
        sys.stdout,
        indent=2,
    )


if __name__ == "__main__":
    main()
