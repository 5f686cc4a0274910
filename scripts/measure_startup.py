"""Measure a web process's start-up: Django set up, the WSGI application built and every URL
module imported, as gunicorn's worker does before its first request.

    .venv/bin/python scripts/measure_startup.py [--runs 5]

Each run is a fresh interpreter; prints the median wall time and resident memory (VmHWM, the
peak RSS) of the runs, and whether torch ended up imported. docs/architecture.md quotes it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

CHILD = r"""
import json, os, sys, time
t0 = time.perf_counter()
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mergehub.settings")
from django.core.wsgi import get_wsgi_application
get_wsgi_application()
from django.urls import get_resolver, URLResolver

def walk(patterns):
    for p in patterns:
        if isinstance(p, URLResolver):
            walk(p.url_patterns)

walk(get_resolver().url_patterns)
seconds = time.perf_counter() - t0
status = dict(line.split(":", 1) for line in open("/proc/self/status") if ":" in line)
print(json.dumps({"seconds": seconds, "rss_kib": int(status["VmHWM"].split()[0]),
                  "heavy": sorted(m for m in ("torch", "numpy", "safetensors") if m in sys.modules),
                  "modules": len(sys.modules)}))
"""


def measure(runs: int) -> dict:
    env = dict(os.environ, SECRET_KEY=os.environ.get("SECRET_KEY", "measure-startup"))
    samples = []
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, env=env, check=True,
                             capture_output=True, text=True).stdout
        samples.append(json.loads(out.strip().splitlines()[-1]))
    return {"seconds": statistics.median(s["seconds"] for s in samples),
            "rss_mib": statistics.median(s["rss_kib"] for s in samples) / 1024,
            "torch": any("torch" in s["heavy"] for s in samples),
            "heavy": sorted({m for s in samples for m in s["heavy"]}),  # of torch, numpy, safetensors
            "modules": statistics.median(s["modules"] for s in samples)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    result = measure(parser.parse_args().runs)
    print("| start-up (median) | wall time | peak RSS | modules | torch imported |")
    print("|---|---|---|---|---|")
    print(f"| django.setup + WSGI app + every URL module | {result['seconds']:.2f} s |"
          f" {result['rss_mib']:.0f} MiB | {result['modules']:.0f} | {'yes' if result['torch'] else 'no'} |")


if __name__ == "__main__":
    main()
