"""Attack: make a TrainingRun's trainer read what is not its data, and echo it into status
(issue 13, items 3 and 7, "Data sources").

The trainer runs as the real ``kubeloop train`` subprocess with a secret in its environment,
as a pod has a ``credentials.secretRef`` Secret: ``SECRET_TOKEN=s3cr3t-…``. Its termination
message is what the operator copies into the TrainingRun's status. Each attack runs twice:

* against a deliberately weakened policy, set up only here, where the secret must come out in
  the termination message (so the attack is real and the test cannot pass vacuously): data
  roots of ``/``; a policy that checks paths as written without resolving them; reader errors
  and validation messages repeated as they are;
* against the real policy (the data roots a Job builder declares, ``KUBELOOP_DATA_ROOTS``),
  where the run is refused with its exit code and a message naming the field, and the secret
  appears nowhere: not in stdout, stderr or the termination message.

A weakened run is the same entry point (``kubeloop.runtime.train.main``) started through a tiny
runner that swaps one function of the policy before the first import of the trainer.
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest

from kubeloop.training.result import EXIT_CODES, EXIT_UNAVAILABLE, REASON_SPEC_INVALID, parse_result

SECRET = "s3cr3t-7f3a9c"
SECRET_ENV = {"SECRET_TOKEN": SECRET}  # first, as a Secret's keys come first in a pod's environ
EXIT_SPEC = EXIT_CODES["TrainingFailed"]  # final: the Job fails on the first pod
EXIT_VALIDATION = EXIT_CODES["DataValidationFailed"]

# Weakened policies: each replaces one piece of the real one, in the trainer's own process.
ROOTS_EVERYWHERE = {"KUBELOOP_DATA_ROOTS": "/"}
UNRESOLVED_PATHS = "import kubeloop.trust.data_paths as p; p.resolved = lambda path: path"
RAW_READ_ERRORS = (
    "import kubeloop.trust.data_paths as p; p.read_error_summary = lambda error, fmt: str(error)"
)
UNCAPPED_COLUMNS = (
    "import kubeloop.trust.data_paths as p; "
    "p.column_names = lambda names, limit=0, quoted=True: ', '.join(map(repr, names))"
)
# The class-balance rule as it was before issue 13: the rarest label is named.
LABEL_ECHO = textwrap.dedent('''
    import kubeloop.training.validate as v
    def _class_failures(labels, target, min_fraction):
        frequencies = labels.value_counts(normalize=True)
        label, rarest = frequencies.index[-1], float(frequencies.iloc[-1])
        if min_fraction is not None and rarest < min_fraction:
            return [v._fail(target, "min_class_fraction", {"class": str(label)}, min_fraction,
                            f"class {label!r} of target {target!r} is {rarest:.2%} of the rows")]
        return []
    v._class_failures = _class_failures
''')


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str
    termination: bytes

    @property
    def result(self) -> Any:
        return parse_result(self.termination)

    def shows_secret(self) -> bool:
        return SECRET in self.stdout or SECRET in self.stderr or SECRET.encode() in self.termination


def _spec(source: str, **data: Any) -> dict[str, Any]:
    return {
        "model": {"name": "m", "estimator": "sklearn.tree.DecisionTreeClassifier", "task": "classification"},
        "data": {"source": source, "target": "target", "format": "csv", **data},
    }


def train(tmp_path: Path, spec: dict[str, Any], env: dict[str, str], weaken: str | None = None) -> Run:
    """``kubeloop train`` in its own process; ``weaken`` is Python run first (weakened policy)."""
    spec_file = tmp_path / "spec.json"
    spec_file.write_bytes(orjson.dumps(spec))
    termination = tmp_path / "termination-log"
    termination.unlink(missing_ok=True)
    if weaken is None:
        command = [sys.executable, "-m", "kubeloop.cli", "train"]
    else:
        runner = tmp_path / "weakened_train.py"
        runner.write_text(f"import sys\n{weaken}\nfrom kubeloop.runtime.train import main\nsys.exit(main())\n")
        command = [sys.executable, str(runner)]
    environment = {
        **SECRET_ENV,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        **{k: v for k, v in os.environ.items() if k.startswith(("PYTHON", "OPENBLAS", "VIRTUAL_ENV"))},
        "OMP_NUM_THREADS": "1",
        **env,
    }
    proc = subprocess.run(
        [*command, "--spec", str(spec_file), "--run-name", "attack", "--storage-uri",
         f"file://{tmp_path}/models", "--termination-log", str(termination), "--quiet"],
        env=environment, capture_output=True, text=True, timeout=300,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, termination.read_bytes() if termination.exists() else b"")


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


def real_roots(tmp_path: Path, data_root: Path) -> dict[str, str]:
    """What the Job builder declares: the data volume and the storage root."""
    return {"KUBELOOP_DATA_ROOTS": f"{data_root}:{tmp_path}/models"}


def assert_refused_for_the_source(run: Run, data_root: Path) -> None:
    assert run.code == EXIT_SPEC, run.stderr
    assert (run.result.status, run.result.reason) == ("TrainingFailed", REASON_SPEC_INVALID)
    message = run.result.message
    assert "spec.data.source" in message and str(data_root) in message and "pvc://" in message
    assert not run.shows_secret()


# --- local files outside the data volumes -------------------------------------------------


def test_proc_self_environ_is_not_data(tmp_path: Path, data_root: Path) -> None:
    spec = _spec("file:///proc/self/environ")
    weakened = train(tmp_path, spec, ROOTS_EVERYWHERE)
    # The attack is real: the environment's first variable comes back as a column name.
    assert weakened.code == EXIT_VALIDATION and SECRET in weakened.result.message
    assert weakened.shows_secret()

    refused = train(tmp_path, spec, real_roots(tmp_path, data_root))
    assert_refused_for_the_source(refused, data_root)
    assert "/proc/self/environ" in refused.result.message  # where it led, not what it holds


def test_proc_is_refused_even_without_declared_roots(tmp_path: Path) -> None:
    # A laptop run (no KUBELOOP_DATA_ROOTS) still never reads the machine's own files.
    refused = train(tmp_path, _spec("/proc/self/environ"), {})
    assert refused.code == EXIT_SPEC and "spec.data.source" in refused.result.message
    assert "/proc" in refused.result.message and not refused.shows_secret()


def test_dotdot_cannot_climb_out_of_a_data_volume(tmp_path: Path, data_root: Path) -> None:
    depth = len(data_root.parts) - 1
    spec = _spec(f"file://{data_root}/{'../' * depth}proc/self/environ")
    weakened = train(tmp_path, spec, real_roots(tmp_path, data_root), weaken=UNRESOLVED_PATHS)
    assert weakened.shows_secret(), weakened.termination  # a prefix check on the path as written

    refused = train(tmp_path, spec, real_roots(tmp_path, data_root))
    assert_refused_for_the_source(refused, data_root)


def test_a_symlink_inside_a_data_volume_cannot_point_out(tmp_path: Path, data_root: Path) -> None:
    (data_root / "train.csv").symlink_to("/proc/self/environ")
    spec = _spec(f"file://{data_root}/train.csv")
    weakened = train(tmp_path, spec, real_roots(tmp_path, data_root), weaken=UNRESOLVED_PATHS)
    assert weakened.shows_secret(), weakened.termination

    refused = train(tmp_path, spec, real_roots(tmp_path, data_root))
    assert_refused_for_the_source(refused, data_root)


def test_pvc_uri_cannot_climb_out_of_its_claim(tmp_path: Path) -> None:
    mount_root = tmp_path / "mnt"
    (mount_root / "data").mkdir(parents=True)
    depth = len(mount_root.parts) + 1
    spec = _spec(f"pvc://data/{'../' * depth}proc/self/environ")
    roots = {"KUBELOOP_DATA_ROOTS": f"{mount_root}/data", "KUBELOOP_PVC_MOUNT_ROOT": str(mount_root)}
    weakened = train(tmp_path, spec, roots, weaken=UNRESOLVED_PATHS)
    assert weakened.shows_secret(), weakened.termination

    refused = train(tmp_path, spec, roots)
    assert refused.code == EXIT_SPEC and "spec.data.source" in refused.result.message
    assert not refused.shows_secret()


def test_fsspec_protocols_that_reach_local_files_are_refused(tmp_path: Path, data_root: Path) -> None:
    for source in ("local:///proc/self/environ", "simplecache::file:///proc/self/environ"):
        spec = _spec(source)
        weakened = train(tmp_path, spec, real_roots(tmp_path, data_root),
                         weaken="import kubeloop.trust.data_paths as p; p.remote_scheme_problem = lambda l: None")
        assert weakened.shows_secret(), (source, weakened.termination)
        refused = train(tmp_path, spec, real_roots(tmp_path, data_root))
        assert refused.code == EXIT_SPEC and "spec.data.source" in refused.result.message, source
        assert not refused.shows_secret()


def test_data_below_a_declared_volume_still_trains(tmp_path: Path, data_root: Path) -> None:
    rows = "\n".join(f"{i % 7},{(i * 3) % 5},{i % 2}" for i in range(60))
    (data_root / "train.csv").write_text("a,b,target\n" + rows + "\n")
    run = train(tmp_path, _spec(f"file://{data_root}/train.csv"), real_roots(tmp_path, data_root))
    assert run.code == 0, run.stderr
    assert run.result.status == "Succeeded"


# --- remote data and content in messages --------------------------------------------------


class SecretServer:
    """A real HTTPS server on 127.0.0.1 answering 200 with a body no CSV reader accepts, the
    secret on its bad line. (An error status is no vector here: fsspec turns every failed
    request into FileNotFoundError(url) before a reader sees it.)"""

    def __init__(self, certificate: Path, key: Path) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = f'a,target\n1,0\n"{SECRET},x,y\n'.encode()
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(certificate, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.url = f"https://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> SecretServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[tuple[SecretServer, dict[str, str]]]:
    openssl = shutil.which("openssl") or pytest.fail("openssl is needed to make the test server's certificate")
    certificate, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(certificate)],
        check=True, capture_output=True, timeout=60,
    )
    with SecretServer(certificate, key) as server:
        yield server, {"SSL_CERT_FILE": str(certificate), "KUBELOOP_DATA_ROOTS": ""}


def test_an_unparseable_https_body_is_not_echoed(tmp_path: Path, https_server: tuple[SecretServer, dict[str, str]]) -> None:
    server, env = https_server
    spec = _spec(f"{server.url}/garbled.csv?token={SECRET}")  # a presigned URL's signature
    # Weakened: the reader's error and the source as written, as before issue 13. pandas' C
    # reader does not quote this line (its pyarrow reader does: see the next test), so what
    # comes out here is the URL's token; the real policy repeats neither.
    weakened = train(tmp_path, spec, env, weaken=RAW_READ_ERRORS
                     + "; p.display_uri = lambda uri: uri")
    assert weakened.code == EXIT_UNAVAILABLE and weakened.shows_secret(), weakened.termination

    refused = train(tmp_path, spec, env)
    assert refused.code == EXIT_UNAVAILABLE and refused.result.reason == "DataUnavailable"
    message = refused.result.message
    assert "not readable as csv" in message and "ParserError" in message and "spec.data.source" in message
    assert not refused.shows_secret()


def test_a_reader_error_that_quotes_the_line_is_summarised() -> None:
    # pyarrow's CSV reader (pandas engine="pyarrow") quotes the offending line in its error.
    import io

    import pandas as pd

    from kubeloop.trust.data_paths import read_error_summary

    body = f"a,target\n1,0\n{SECRET},x,y,z\n".encode()
    with pytest.raises(Exception) as caught:
        pd.read_csv(io.BytesIO(body), engine="pyarrow")
    assert SECRET in str(caught.value)  # weakened: the error as it is
    summary = read_error_summary(caught.value, "csv")
    assert SECRET not in summary
    assert summary.startswith("not readable as csv; ParserError")


def test_column_names_are_capped(tmp_path: Path, data_root: Path) -> None:
    # The first line of a file is repeated as column names (so a user can fix the target),
    # but only the first ten, sorted, each cut at 40 characters.
    header = [f"c{i:02d}" for i in range(12)] + [f"zz-{SECRET}", f"a-very-long-column-name-{'x' * 30}-{SECRET}"]
    (data_root / "wide.csv").write_text(",".join(header) + "\n" + ",".join("1" for _ in header) + "\n")
    spec = _spec(f"file://{data_root}/wide.csv")
    weakened = train(tmp_path, spec, real_roots(tmp_path, data_root), weaken=UNCAPPED_COLUMNS)
    assert weakened.code == EXIT_VALIDATION and weakened.shows_secret()

    refused = train(tmp_path, spec, real_roots(tmp_path, data_root))
    assert refused.code == EXIT_VALIDATION
    (failure,) = [f for f in refused.result.failures if f.rule == "target_present"]
    assert "'c00'" in failure.message and "(14 in all)" in failure.message
    assert not refused.shows_secret()


def test_a_failed_rule_names_rule_and_column_never_the_values(tmp_path: Path, data_root: Path) -> None:
    # The secret is a label of the target: the class-balance rule used to name the rarest class.
    rows = [f"{i},{'common' if i % 50 else SECRET}" for i in range(200)]
    (data_root / "labels.csv").write_text("x,target\n" + "\n".join(rows) + "\n")
    spec = {**_spec(f"file://{data_root}/labels.csv"), "validation": {"minClassFraction": 0.1}}
    weakened = train(tmp_path, spec, real_roots(tmp_path, data_root), weaken=LABEL_ECHO)
    assert weakened.code == EXIT_VALIDATION and weakened.shows_secret(), weakened.termination

    refused = train(tmp_path, spec, real_roots(tmp_path, data_root))
    assert refused.code == EXIT_VALIDATION
    (failure,) = refused.result.failures
    assert (failure.rule, failure.column) == ("min_class_fraction", "target")
    assert "rarest class of target 'target'" in failure.message
    assert not refused.shows_secret()


# --- a DriftPolicy's dataset, read by `kubeloop drift` ------------------------------------


def drift(tmp_path: Path, data: str, reference: str, env: dict[str, str]) -> Run:
    termination = tmp_path / "drift-termination"
    termination.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-m", "kubeloop.cli", "drift", "--data", data, "--reference", reference,
         "--format", "csv", "--termination-log", str(termination)],
        env={**SECRET_ENV, "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp_path), **env},
        capture_output=True, text=True, timeout=300,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr, termination.read_bytes() if termination.exists() else b"")


def test_a_drift_dataset_is_held_to_the_same_roots(tmp_path: Path, data_root: Path) -> None:
    reference = data_root / "reference.csv"
    reference.write_text("a\n1\n2\n3\n")
    weakened = drift(tmp_path, "file:///proc/self/environ", f"file://{reference}", ROOTS_EVERYWHERE)
    # The attack is real: the check lists the columns it found, and the first one is the secret.
    assert weakened.code == 2 and weakened.shows_secret(), weakened.termination

    refused = drift(tmp_path, "file:///proc/self/environ", f"file://{reference}", real_roots(tmp_path, data_root))
    assert refused.code == 2
    result = json.loads(refused.termination)
    assert result["reason"] == "DataUnavailable"
    assert "spec.source.dataset.uri" in result["message"] and str(data_root) in result["message"]
    assert not refused.shows_secret()
