"""`kubeloop serve` attacked over real sockets: what a request may cost, and who may label.

Given a real server process (one worker, so its RSS is the server's), when a client sends an
oversized body, trickles its headers or body, floods the worker beyond its concurrency, fills
the /feedback store with large predictions, reuses another client's request id, then the
server refuses with 413 / 408 / 503 + Retry-After / 409, its memory stays within the bounds
stated here (measured from /proc), and normal clients keep being answered.
"""

from __future__ import annotations

import asyncio
import itertools
import select
import socket
import statistics
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest
from serve_fixtures import RunningServer, StoredModel, metric_sum, serving

from kubeloop.serving.feedback import LABELLED, RecentPredictions

MIB = 1024 * 1024


def rss_bytes(server: RunningServer, field: str = "VmRSS") -> int:
    """The server process's resident memory (VmRSS) or its peak so far (VmHWM), from /proc."""
    for line in Path(f"/proc/{server.process.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{server.process.pid}/status")


def host_port(server: RunningServer) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").split(":")
    return host, int(port)


def raw_request(server: RunningServer, head: bytes, body_chunks: Iterable[bytes] = ()) -> bytes:
    """Send ``head`` and then body chunks until the server answers; the raw answer.

    A full send buffer means the server reads slower than we write, not that it answered:
    wait until the socket is writable (or readable: an early answer) and keep sending.
    Giving up on a full buffer left a chunked body short of the limit, and the server then
    rightly answered 408 at its body deadline instead of 413.
    """
    with socket.create_connection(host_port(server), timeout=30) as sock:
        sock.sendall(head)
        answer = b""
        for chunk in body_chunks:
            pending = memoryview(chunk)
            while pending and not answer:
                readable, writable, _ = select.select([sock], [sock], [], 30)
                if readable:
                    try:
                        answer += sock.recv(65536) or b"\0"  # EOF: stop sending
                    except ConnectionResetError:
                        return answer
                elif writable:
                    try:
                        pending = pending[sock.send(pending) :]
                    except (BrokenPipeError, ConnectionResetError):
                        break
                else:
                    raise AssertionError("the server neither read nor answered for 30 s")
            if answer:
                break
        answer = answer.rstrip(b"\0")
        try:
            while not answer.endswith(b"}"):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except ConnectionResetError:
            pass
        return answer


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1 ") else 0


def one_row(model: StoredModel) -> dict[str, object]:
    return {"instances": model.features[:1].tolist()}


# -- 1. bodies and rows ----------------------------------------------------------------------

MAX_BODY = 4 * MIB
BUFFERED = 12 * MIB


@pytest.fixture(scope="module")
def limited(
    models: dict[str, StoredModel], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    with serving(
        models["diabetes_ridge"],
        tmp_path_factory.mktemp("logs"),
        "--max-body-bytes", str(MAX_BODY),
        "--max-buffered-body-bytes", str(BUFFERED),
        "--max-request-rows", "30000",
        "--feedback-max-bytes", str(2 * MIB),
    ) as server:  # fmt: skip
        yield server


def test_an_oversized_body_is_413_before_it_is_read_and_memory_stays_flat(
    limited: RunningServer,
) -> None:
    # 33 MB, as in the issue (it took the server from 152 to 794 MB).
    size = 33 * 1000 * 1000
    head = (
        b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(size).encode() + b"\r\n\r\n"
    )
    before = rss_bytes(limited)
    for _ in range(5):
        chunks = (b"[" + b"0" * 65534 + b"," for _ in range(size // 65536))
        answer = raw_request(limited, head, chunks)
        assert status_of(answer) == 413, answer[:300]
        assert b"--max-body-bytes" in answer and b"connection: close" in answer.lower()
    # Chunked (no Content-Length): refused as soon as the count passes the limit.
    chunked_head = b"POST /predict HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
    chunk = b"10000\r\n" + b"1" * 65536 + b"\r\n"
    answer = raw_request(limited, chunked_head, (chunk for _ in range(size // 65536)))
    assert status_of(answer) == 413, answer[:300]
    grown = rss_bytes(limited) - before
    print(f"6 refused 33 MB bodies: RSS grew {grown / MIB:.1f} MiB")
    # Stated bound: 6 refused bodies of 33 MB cost less than 8 MiB of resident memory.
    assert grown < 8 * MIB, f"RSS grew by {grown / MIB:.1f} MiB"
    assert httpx.post(limited.url + "/predict", json={"instances": [[0.0] * 10]}).status_code == 200


def test_too_many_rows_is_413_naming_the_option(limited: RunningServer) -> None:
    answer = httpx.post(limited.url + "/predict", json={"instances": [[0.0] * 10] * 30001})
    assert answer.status_code == 413
    assert "--max-request-rows" in answer.json()["error"]
    rows = np.zeros((30001, 10))
    v2 = {"inputs": [{"name": "x", "shape": [30001, 10], "datatype": "FP64",
                      "data": rows.ravel().tolist()}]}  # fmt: skip
    assert (
        httpx.post(limited.url + "/v2/models/model/infer", json=v2, timeout=30).status_code == 413
    )


def test_a_flood_of_large_bodies_stays_within_the_stated_peak(limited: RunningServer) -> None:
    # 40 clients at once, each a body just under the 4 MiB limit (about 21,000 rows).
    row = [0.1234567890123456] * 10
    count = (MAX_BODY - 1000) // len(orjson.dumps(row) + b",")
    body = orjson.dumps({"instances": [row] * count})
    assert MAX_BODY - 100_000 < len(body) <= MAX_BODY
    baseline = rss_bytes(limited)

    async def flood() -> list[int]:
        async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=40)) as c:
            answers = await asyncio.gather(
                *(c.post(limited.url + "/predict", content=body) for _ in range(40)),
                return_exceptions=True,
            )
        return [a.status_code if isinstance(a, httpx.Response) else 0 for a in answers]

    statuses = asyncio.run(flood())
    peak = rss_bytes(limited, "VmHWM")
    print(
        f"flood of 40 x 4 MiB: peak RSS {(peak - baseline) / MIB:.1f} MiB above baseline, {statuses}"
    )
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 3, statuses
    # Stated bound: the bodies held at once (--max-buffered-body-bytes, 12 MiB here) plus
    # the decoding of one body (its JSON as Python objects, then float64 rows), under
    # 80 MiB above the quiet server, whatever the number of clients.
    assert peak - baseline < 80 * MIB, f"peak RSS {(peak - baseline) / MIB:.1f} MiB above baseline"
    assert httpx.post(limited.url + "/predict", json={"instances": [[0.0] * 10]}).status_code == 200


# -- 2. request ids and labels ---------------------------------------------------------------


def test_server_ids_are_128_random_bits(limited: RunningServer) -> None:
    ids = [
        httpx.post(limited.url + "/predict", json={"instances": [[0.0] * 10]}).json()["id"]
        for _ in range(20)
    ]
    assert len(set(ids)) == 20
    # "<worker process prefix>-<32 hex digits>": the same prefix (one worker), then 128 bits.
    prefixes = {i.split("-")[0] for i in ids}
    randoms = [i.split("-")[1] for i in ids]
    assert len(prefixes) == 1
    assert all(len(r) == 32 and int(r, 16) >= 0 for r in randoms)
    # No counter: the random parts agree in about 1/16 of their hex digits, by chance.
    same = sum(a == b for x, y in itertools.pairwise(randoms) for a, b in zip(x, y, strict=True))
    assert same < 19 * 32 / 4


def test_a_colliding_id_cannot_hijack_a_label(
    limited: RunningServer, models: dict[str, StoredModel]
) -> None:
    model = models["diabetes_ridge"]
    url = limited.url
    victim = httpx.post(
        url + "/predict", json={"instances": model.features[:3].tolist(), "id": "order-1"}
    )
    assert victim.status_code == 200
    # Another client sends a prediction under the same id: refused, the victim's stays.
    thief = httpx.post(
        url + "/predict", json={"instances": model.features[5:6].tolist(), "id": "order-1"}
    )
    assert thief.status_code == 409 and "already used" in thief.json()["error"]
    by_header = httpx.post(
        url + "/predict", json={"instances": [[0.0] * 10]}, headers={"x-request-id": "order-1"}
    )
    assert by_header.status_code == 409
    # The victim's three labels match the victim's three predictions (one row would be a 400).
    label = httpx.post(
        url + "/feedback", json={"id": "order-1", "labels": model.target[:3].tolist()}
    )
    assert label.status_code == 200 and label.json()["matched"] == ["order-1"]
    # A second label for the same id is refused, not counted over the first.
    rows_before = metric_sum(limited.metrics(), "kubeloop_serve_feedback_rows_total")
    again = httpx.post(url + "/feedback", json={"id": "order-1", "labels": [0, 0, 0]})
    assert again.status_code == 409, again.text
    assert again.json()["already_labelled"] == ["order-1"] and again.json()["matched"] == []
    assert metric_sum(limited.metrics(), "kubeloop_serve_feedback_rows_total") == rows_before
    # Whoever labels first wins: a label sent for a server id before its owner gets 409 for
    # the owner, never a silent drop (and server ids cannot be guessed, see above).
    served = httpx.post(url + "/predict", json={"instances": [[0.0] * 10]}).json()["id"]
    assert httpx.post(url + "/feedback", json={"id": served, "label": 1.0}).status_code == 200
    assert httpx.post(url + "/feedback", json={"id": served, "label": 2.0}).status_code == 409


def test_the_feedback_store_stays_within_its_byte_budget(limited: RunningServer) -> None:
    # 75 requests of 20,000 rows: 160 KB of float64 predictions each, 12 MB in all, against
    # a budget of 2 MiB (--feedback-max-bytes). Before the budget this grew without bound.
    body = orjson.dumps({"instances": [[0.5] * 10] * 20_000})
    ids = []

    def send(count: int) -> None:
        for _ in range(count):
            answer = httpx.post(limited.url + "/predict", content=body, timeout=30)
            assert answer.status_code == 200
            ids.append(answer.json()["id"])

    send(15)  # fills the budget and warms the allocator up to one request's decoding
    before = rss_bytes(limited)
    send(60)
    grown = rss_bytes(limited) - before
    print(f"60 x 160 KB predictions past a full 2 MiB budget: RSS grew {grown / MIB:.1f} MiB")
    # The oldest were forgotten first; the newest still take their labels.
    oldest = httpx.post(limited.url + "/feedback", json={"id": ids[0], "labels": [1.0] * 20_000})
    newest = httpx.post(limited.url + "/feedback", json={"id": ids[-1], "labels": [1.0] * 20_000})
    assert oldest.json()["unknown"] == [ids[0]]
    assert newest.json()["matched"] == [ids[-1]]
    # Stated bound: once the 2 MiB budget is full, 9.6 MB more of predictions grow the
    # server by less than 3 MiB (kept without a byte budget, they would add 9.6 MB).
    assert grown < 3 * MIB, f"RSS grew by {grown / MIB:.1f} MiB"


def test_recent_predictions_count_bytes_and_age() -> None:
    now = [0.0]
    recent = RecentPredictions(
        capacity=1000, max_bytes=100_000, max_age_seconds=60, clock=lambda: now[0]
    )
    for i in range(10):
        recent.remember(f"id-{i}", np.zeros(2_000))  # 16 KB each
    assert (
        recent.bytes <= 100_000 and recent.peek("id-0") is None and recent.peek("id-9") is not None
    )
    recent.mark_labelled("id-9")
    assert recent.peek("id-9") is LABELLED and recent.bytes < 100_000
    now[0] = 61.0
    assert recent.peek("id-8") is None and len(recent) == 0 and recent.bytes == 0
    recent.remember("huge", np.zeros(20_000))  # larger than the whole budget: not kept
    assert recent.peek("huge") is None


# -- 3. concurrency --------------------------------------------------------------------------


def test_a_flood_beyond_the_concurrency_limit_gets_503_and_the_server_recovers(
    models: dict[str, StoredModel], tmp_path: Path
) -> None:
    model = models["forest"]
    with serving(
        model, tmp_path, "--max-concurrent-requests", "4", "--retry-after-seconds", "2"
    ) as server:
        body = orjson.dumps({"instances": model.features[:200].tolist()})

        async def flood() -> list[httpx.Response | BaseException]:
            limits = httpx.Limits(max_connections=300)
            async with httpx.AsyncClient(timeout=60, limits=limits) as client:
                return await asyncio.gather(
                    *(client.post(server.url + "/predict", content=body) for _ in range(300)),
                    return_exceptions=True,
                )

        answers = asyncio.run(flood())
        statuses = [a.status_code for a in answers if isinstance(a, httpx.Response)]
        assert len(statuses) == 300, [a for a in answers if not isinstance(a, httpx.Response)][:3]
        assert set(statuses) == {200, 503}, set(statuses)
        refused = [a for a in answers if isinstance(a, httpx.Response) and a.status_code == 503]
        assert all(a.headers["retry-after"] == "2" for a in refused)
        assert server.process.poll() is None
        after = httpx.post(server.url + "/predict", json={"instances": model.features[:1].tolist()})
        assert after.status_code == 200
        assert metric_sum(server.metrics(), "kubeloop_serve_requests_total", code="503") == len(
            refused
        )


# -- 4. slow clients -------------------------------------------------------------------------


def test_slow_clients_are_cut_at_their_deadline_while_normal_clients_are_answered(
    models: dict[str, StoredModel], tmp_path: Path
) -> None:
    model = models["forest"]
    with serving(
        model, tmp_path, "--header-timeout-seconds", "3", "--body-timeout-seconds", "3"
    ) as server:
        quiet = _latencies(server, model, 200)
        stop = threading.Event()
        closed_after: list[float] = []

        def slow(kind: str) -> None:
            sock = socket.create_connection(host_port(server), timeout=30)
            started = time.monotonic()
            if kind == "body":
                sock.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n")
            message = b"GET /v2/health/live HTTP/1.1\r\nx-slow: " + b"a" * 100
            try:
                for byte in message:
                    if stop.is_set():
                        return
                    sock.sendall(bytes([byte]))
                    time.sleep(1.0)
            except OSError:
                pass  # cut by the server
            finally:
                # Read what the server said (408), then see the close.
                try:
                    sock.settimeout(5)
                    while sock.recv(1024):
                        pass
                except OSError:
                    pass
                closed_after.append(time.monotonic() - started)
                sock.close()

        threads = [
            threading.Thread(target=slow, args=("head" if i % 2 else "body",)) for i in range(200)
        ]
        for thread in threads:
            thread.start()
        time.sleep(0.5)
        attacked = _latencies(server, model, 200)
        for thread in threads:
            thread.join(timeout=20)
        stop.set()
        assert len(closed_after) == 200
        # Cut at the 3 s deadline (plus the 1 s a byte, and thread start-up), not held.
        assert max(closed_after) < 3 + 2.5, sorted(closed_after)[-5:]
        # Normal clients: answered throughout, the median at most twice the quiet median plus
        # 10 ms (two hundred socket threads in this test process share two CPUs with the
        # server and other work; the p99 under a 300-client attack is hack/bench/serve/abuse.py's).
        quiet_median, attacked_median = statistics.median(quiet), statistics.median(attacked)
        assert attacked_median <= 2 * quiet_median + 0.010, (quiet_median, attacked_median)
        assert max(attacked) < 2.0


def _latencies(server: RunningServer, model: StoredModel, count: int) -> list[float]:
    body = orjson.dumps({"instances": model.features[:1].tolist()})
    out = []
    with httpx.Client(timeout=10) as client:
        for _ in range(count):
            started = time.perf_counter()
            answer = client.post(server.url + "/predict", content=body)
            out.append(time.perf_counter() - started)
            assert answer.status_code == 200
    return out


def test_oversized_headers_are_431(limited: RunningServer) -> None:
    head = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-big: " + b"a" * (200 * 1024)
    answer = raw_request(limited, head)
    assert status_of(answer) == 431, answer[:200]


def test_the_batch_queue_is_bounded_in_rows() -> None:
    from kubeloop.serving.batching import MicroBatcher, QueueFull

    async def run() -> None:
        batcher = MicroBatcher(lambda rows, _: (rows[:, 0], None), 64, 0.0, max_queued_rows=100)
        # Not started yet: nothing takes rows off the queue.
        first = asyncio.ensure_future(batcher.predict(np.zeros((60, 2))))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="60 rows are waiting"):
            await batcher.predict(np.zeros((60, 2)))
        alone = MicroBatcher(lambda rows, _: (rows[:, 0], None), 64, 0.0, max_queued_rows=100)
        alone.start()
        assert (await alone.predict(np.ones((500, 2)))).predictions.shape == (500,)  # one alone
        batcher.start()
        assert (await first).predictions.shape == (60,)
        assert batcher.queued_rows == 0
        await batcher.stop()
        await alone.stop()

    asyncio.run(run())
