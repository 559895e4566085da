"""Writes examples/day_trace.jsonl, the example trace of `launch simulate` (seeded: the same file each run).

A day of a small ML team's work: every hour a burst of short CPU preprocessing tasks, GPU training runs of
one to three hours through the day (spot is fine: they checkpoint), and evaluation runs that must not be
interrupted (spot_ok: false)."""

import json
import random
from pathlib import Path

rng = random.Random(7)
tasks = []
for hour in range(24):
    for _ in range(rng.randint(20, 60)):
        tasks.append({"t": hour * 3600 + rng.randint(0, 600), "resources": {"CPU": 1},
                      "duration": rng.randint(60, 300), "name": "preprocess"})
for _ in range(40):
    tasks.append({"t": rng.randint(0, 20 * 3600), "resources": {"CPU": 4, "GPU": 1},
                  "duration": rng.randint(3600, 3 * 3600), "name": "train"})
for _ in range(12):
    tasks.append({"t": rng.randint(2 * 3600, 22 * 3600), "resources": {"CPU": 2, "GPU": 1},
                  "duration": rng.randint(600, 1800), "spot_ok": False, "name": "evaluate"})
out = Path(__file__).with_name("day_trace.jsonl")
out.write_text("".join(json.dumps(t) + "\n" for t in sorted(tasks, key=lambda t: t["t"])))
print(f"{out}: {len(tasks)} tasks")
