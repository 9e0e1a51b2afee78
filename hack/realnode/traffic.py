"""Traffic for the demo's model: Open Inference Protocol v2 requests with breast_cancer rows.

Runs in a pod of the project's own image (hack/realnode/helmloop.py puts this file into a
ConfigMap and starts ``python /traffic/traffic.py --url ... --mode normal|shifted``), and is
imported on the host for the same ``shift`` when the demo writes the "newer data" CSV: the
traffic the model sees after the shift and the data it is retrained on change the same way.

* ``normal``: rows drawn from the training data as they are;
* ``shifted``: the same rows with the ``SHIFTED`` measurements scaled by ``FACTOR`` (say a new
  scanner calibration): the served model's inputs and its predictions drift.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from typing import Any

# 15 of the 30 measurements (the "worst" and "error" ones): half the inputs drift, well above
# the quickstart's driftShare of 0.3, and the shift stays inside its validation ranges
# (mean radius <= 50).
SHIFTED = tuple(range(10, 20)) + tuple(range(25, 30))
FACTOR = 1.6


def shift_row(row: Sequence[float]) -> list[float]:
    """One row as the shifted world measures it."""
    return [value * FACTOR if index in SHIFTED else float(value) for index, value in enumerate(row)]


def body(rows: Sequence[Sequence[float]]) -> bytes:
    data = [float(v) for row in rows for v in row]
    request = {"inputs": [{"name": "input-0", "shape": [len(rows), len(rows[0])], "datatype": "FP64", "data": data}]}
    return json.dumps(request).encode()


def run(url: str, mode: str, rate: float, seconds: float) -> None:
    from sklearn.datasets import load_breast_cancer

    rows = load_breast_cancer().data.tolist()
    rng = random.Random(7)
    sent = failed = 0
    started = time.monotonic()
    last_report = started
    period = 1.0 / rate
    while seconds <= 0 or time.monotonic() - started < seconds:
        row = rng.choice(rows)
        if mode == "shifted":
            row = shift_row(row)
        request = urllib.request.Request(url, body([row]), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                response.read()
            sent += 1
        except (urllib.error.URLError, OSError):
            failed += 1
        now = time.monotonic()
        if now - last_report >= 10:
            print(f"traffic {mode}: {sent} answered, {failed} failed", flush=True)
            last_report = now
        time.sleep(max(0.0, period - (time.monotonic() - now)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="http://<service>:<port>/v2/models/<name>/infer")
    parser.add_argument("--mode", choices=("normal", "shifted"), default="normal")
    parser.add_argument("--rate", type=float, default=20.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=0.0, help="0: until stopped")
    args: Any = parser.parse_args(argv)
    run(args.url, args.mode, args.rate, args.seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
