"""The stable server counts shadow agreement per row, and a challenger that fails counts.

Given a ``ShadowMirror`` sending to a real challenger on a local socket (one that answers, or
fails with a 500, answers too late, answers something unreadable, or is not listening), when
batched requests are mirrored, then ``kubeloop_serve_shadow_rows_total`` holds one count per
row, ``error`` for every row of a mirror the challenger did not answer, and the built-in
``shadowAgreement`` check, run over the server's own exposition, is the share of agreeing
rows: not the request share (a request agrees only if all its rows do), and never "no data"
for a challenger that fails.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest
from serve_fixtures import free_port

from kubeloop.analysis.builtin import from_increases
from kubeloop.analysis.scrape import increases, parse_metrics
from kubeloop.serving.metrics import MetricLabels, ServeMetrics
from kubeloop.serving.shadow import ShadowMirror

ROWS = "kubeloop_serve_shadow_rows_total"
REQUESTS = "kubeloop_serve_shadow_requests_total"
TIMEOUT_SECONDS = 0.3
FAIL_MARK = -99.0
"""A row whose fourth feature is this makes the ``answers`` challenger fail its request."""


def stable_answer(row: list[float]) -> int:
    """The served model: class 1 when the first feature is positive."""
    return int(row[0] > 0)


def challenger_answer(row: list[float]) -> int:
    """The challenger: the served model's answer, except on rows whose second feature is 1."""
    return stable_answer(row) ^ int(row[1] == 1.0)


class Challenger:
    """A challenger server on 127.0.0.1 for ``/predict`` and v2 ``infer``; ``behaviour`` says
    how it answers: ``answers`` (challenger_answer per row; a 500 for a request with a
    FAIL_MARK row), ``500``, ``slow`` (after the
    mirror's timeout), ``garbage`` (a 200 that is not an answer)."""

    def __init__(self, behaviour: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("content-length", 0))))
                if behaviour == "slow":
                    time.sleep(TIMEOUT_SECONDS * 4)
                if behaviour == "500":
                    self._send(500, b'{"error": "model failed"}')
                    return
                if behaviour == "garbage":
                    self._send(200, b'{"unexpected": true}')
                    return
                v2 = self.path.endswith("/infer")
                if v2:
                    tensor = body["inputs"][0]
                    rows = np.asarray(tensor["data"]).reshape(tensor["shape"]).tolist()
                else:
                    rows = body["instances"]
                if any(row[3] == FAIL_MARK for row in rows):
                    self._send(500, b'{"error": "model failed"}')
                    return
                answers = [challenger_answer(row) for row in rows]
                if v2:
                    outputs = [{"name": "predict", "shape": [len(answers)], "datatype": "INT64", "data": answers}]
                    self._send(200, json.dumps({"outputs": outputs}).encode())
                else:
                    self._send(200, json.dumps({"predictions": answers}).encode())

            def _send(self, code: int, payload: bytes) -> None:
                self.send_response(code)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def challenger(behaviour: str) -> Iterator[str]:
    """The challenger's base URL; ``down``: a port nothing listens on."""
    if behaviour == "down":
        yield f"http://127.0.0.1:{free_port()}"
        return
    server = Challenger(behaviour)
    try:
        yield server.url
    finally:
        server.close()


def batch(size: int, disagreeing: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` rows of 4 features; the challenger disagrees on the first ``disagreeing``."""
    rows = rng.normal(size=(size, 4))
    rows[:, 1] = np.where(np.arange(size) < disagreeing, 1.0, 0.0)
    return rows


def mirror_all(url: str, batches: list[np.ndarray]) -> ServeMetrics:
    """Mirror every batch (with the served model's predictions) through a real ShadowMirror,
    wait until each one was compared or failed, and return the metrics it counted into."""
    metrics = ServeMetrics(MetricLabels("churn", "0123456789ab", "stable"))

    async def run() -> None:
        mirror = ShadowMirror(url, 100.0, metrics, "classification", concurrency=2,
                              timeout_seconds=TIMEOUT_SECONDS, rng=random.Random(0))  # fmt: skip
        await mirror.start()
        try:
            for rows in batches:
                mirror.offer(rows, np.asarray([stable_answer(r) for r in rows.tolist()]))
            deadline = time.monotonic() + 30
            while counted(metrics, REQUESTS) < len(batches):
                assert time.monotonic() < deadline, "the mirrors were never counted"
                await asyncio.sleep(0.02)
        finally:
            await mirror.stop()

    asyncio.run(run())
    return metrics


def counted(metrics: ServeMetrics, name: str, result: str | None = None) -> float:
    """A shadow counter as the server exports it, summed over ``result`` unless one is given."""
    snapshot = parse_metrics(metrics.render().decode())
    return sum(
        value for (sample, labels), value in snapshot.values.items()
        if sample == name and (result is None or dict(labels).get("result") == result)
    )  # fmt: skip


def gate(metrics: ServeMetrics) -> tuple[float | None, float | None]:
    """What the built-in check measures over this server's exposition: (value, samples)."""
    found = from_increases(
        "shadowAgreement", "agree", increases(parse_metrics(""), parse_metrics(metrics.render().decode()))
    )
    return found.value, found.samples


@pytest.mark.parametrize("endpoint", ["", "/v2/models/churn/infer"], ids=["predict", "v2-infer"])
def test_a_batched_request_counts_each_of_its_rows(endpoint: str) -> None:
    """Given one request of 10 rows on which the challenger differs on 2, then 8 rows agree
    and 2 disagree, while the request as a whole is one "disagree"."""
    with challenger("answers") as url:
        metrics = mirror_all(url + endpoint, [batch(10, 2, np.random.default_rng(1))])
    rows = {r: counted(metrics, ROWS, r) for r in ("agree", "disagree", "error")}
    assert rows == {"agree": 8, "disagree": 2, "error": 0}
    requests = {r: counted(metrics, REQUESTS, r) for r in ("agree", "disagree", "error")}
    assert requests == {"agree": 0, "disagree": 1, "error": 0}
    assert gate(metrics) == (pytest.approx(0.8), 10)


def test_the_gate_is_the_row_share_not_the_request_share() -> None:
    """Given 20 requests of 10 rows, each with one row the challenger answers differently,
    then 90 % of the rows agree and the check says 0.9, which passes a min of 0.85, although
    not one request agreed on every row (the request share would be 0)."""
    rng = np.random.default_rng(2)
    with challenger("answers") as url:
        metrics = mirror_all(url, [batch(10, 1, rng) for _ in range(20)])
    assert (counted(metrics, ROWS, "agree"), counted(metrics, ROWS, "disagree")) == (180, 20)
    assert counted(metrics, REQUESTS, "agree") == 0
    assert gate(metrics) == (pytest.approx(0.9), 200)


@pytest.mark.parametrize("behaviour", ["500", "slow", "garbage", "down"])
def test_every_row_of_a_failed_mirror_is_an_error_row(behaviour: str) -> None:
    """Given a challenger that fails (a 500, no answer within the timeout, an answer without
    predictions, nothing listening), then each row it was sent counts as an error row and the
    check measures 0 on 12 rows: a challenger cannot pass the gate by producing no rows."""
    rng = np.random.default_rng(3)
    with challenger(behaviour) as url:
        metrics = mirror_all(url, [batch(5, 0, rng), batch(7, 0, rng)])
    rows = {r: counted(metrics, ROWS, r) for r in ("agree", "disagree", "error")}
    assert rows == {"agree": 0, "disagree": 0, "error": 12}
    assert counted(metrics, REQUESTS, "error") == 2
    assert gate(metrics) == (0.0, 12)


def test_failed_mirrors_lower_the_share_of_a_challenger_that_answers_the_others() -> None:
    """Answered rows and the rows of failed mirrors share one denominator: a request of 10
    rows answered in full agreement and one of 10 rows answered with a 500 make 0.5."""
    rng = np.random.default_rng(4)
    failing = batch(10, 0, rng)
    failing[:, 3] = FAIL_MARK
    with challenger("answers") as url:
        metrics = mirror_all(url, [batch(10, 0, rng), failing])
    rows = {r: counted(metrics, ROWS, r) for r in ("agree", "disagree", "error")}
    assert rows == {"agree": 10, "disagree": 0, "error": 10}
    assert gate(metrics) == (pytest.approx(0.5), 20)


def test_no_mirrored_row_is_no_data() -> None:
    """A server that mirrored nothing (its counters exist, at 0) gives the check no value."""
    metrics = ServeMetrics(MetricLabels("churn", "0123456789ab", "stable"))
    ShadowMirror("http://127.0.0.1:9", 100.0, metrics, "classification")
    assert counted(metrics, ROWS) == 0
    assert gate(metrics) == (None, None)
