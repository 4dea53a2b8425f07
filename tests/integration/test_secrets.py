"""No secret and no raw user key leaves the worker: `attribution worker` runs as a process at DEBUG
with a Redis password (an ACL user on a password-protected redis-server), a SASL password and an SSL
key password set, handles traffic (conversions and DLQ records), serves /metrics, /healthz and
/readyz, and stops on SIGTERM; then its stdout, stderr and the HTTP bodies are searched.

With ``ATTRIBUTION_LOG_FORMAT=json`` every stderr line must be one JSON object.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import pytest

from attribution.core.model import Event
from attribution.devkit.embedded import free_port
from attribution.infra.config import Config
from tests.support.kafka import Engine, engine_config, env_of
from tests.support.scenarios import click, goal, send, settings
from tests.support.secure import USER, Secured, secret, secured_redis

pytestmark = pytest.mark.integration
T0 = int(time.time() * 1000) - 3600_000
PROJECT_ID = "proj-secret-5512"  # /readyz must not list project ids
USERS = ("user-secret-7781", "user-secret-7782", "user-secret-dlq-7783")  # personal data: never logged


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temp dir removed after the test (certificates, private keys, worker logs)."""
    with tempfile.TemporaryDirectory(prefix="attribution-security-") as directory:
        yield Path(directory)


@dataclass
class Run:
    """A worker process whose stdout and stderr go to files."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def output(self) -> str:
        return self.out.read_text(errors="replace") + self.err.read_text(errors="replace")

    def stop(self, timeout_s: float = 30.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"worker ignored SIGTERM for {timeout_s:.0f} s:\n{self.output()[-3000:]}"
            ) from None


def start_worker(env: dict[str, str], logs: Path) -> Run:
    out, err = logs / "stdout.log", logs / "stderr.log"
    with out.open("wb") as o, err.open("wb") as e:
        proc = subprocess.Popen(
            [sys.executable, "-m", "attribution.cli", "worker"],
            env=env,
            stdout=o,
            stderr=e,
            stdin=subprocess.DEVNULL,
        )
    return Run(proc, out, err)


def http_get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=2) as r:
            return int(r.status), r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def wait_ready(run: Run, port: int, timeout_s: float = 45.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert run.proc.poll() is None, f"worker exited ({run.proc.returncode}):\n{run.output()[-3000:]}"
        try:
            if http_get(port, "/readyz")[0] == 200:
                return
        except OSError:
            pass  # not listening yet
        assert time.monotonic() < deadline, (
            f"worker not ready after {timeout_s:.0f} s:\n{run.output()[-3000:]}"
        )
        time.sleep(0.1)


def wait_exit(run: Run, timeout_s: float = 30.0) -> int:
    try:
        return run.proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        run.stop(5)
        raise AssertionError(
            f"worker still running after {timeout_s:.0f} s:\n{run.output()[-3000:]}"
        ) from None


def ours(event: Event) -> Event:
    return msgspec.structs.replace(event, project_id=PROJECT_ID)


def traffic() -> list[Event]:
    a, b, _ = USERS
    return [
        ours(send("sx-s1", "camp-x", "dev-x1", T0, user=a)),
        ours(click("sx-k1", "camp-x", "dev-x1", T0 + 500, user=a)),
        ours(goal("sx-g1", "signup", "dev-x1", T0 + 1000, user=a)),
        ours(send("sx-s2", "camp-x", "dev-x2", T0, user=b)),
        ours(goal("sx-g2", "purchase", "dev-x2", T0 + 2000, user=b, price=5000, qty=2)),
    ]


@pytest.fixture
def secured() -> Iterator[Secured]:
    with secured_redis(f"r{uuid.uuid4().hex[:10]}") as red:
        yield red


@pytest.fixture
def engine(kafka_bootstrap: str, secured: Secured) -> Iterator[Engine]:
    unique = uuid.uuid4().hex[:8]
    config = engine_config(
        kafka_bootstrap, secured.url, unique, redis_prefix=secured.prefix, log_level="DEBUG"
    )
    eng = Engine(config)
    try:
        yield eng
    finally:
        eng.close()


def worker_env(config: Config, **extra: str) -> dict[str, str]:
    env = env_of(config)
    env.update({"ATTRIBUTION_METRICS_HOST": "127.0.0.1", "ATTRIBUTION_LOG_LEVEL": "DEBUG"})
    env.update(extra)
    return env


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_no_secret_nor_user_key_in_logs_or_endpoints(
    log_format: str, engine: Engine, secured: Secured, scratch: Path
) -> None:
    sasl, ssl_key = secret("sasl-pw"), secret("ssl-key-pw")
    port = free_port()
    env = worker_env(
        engine.config,
        KAFKA_SASL_PASSWORD=sasl,  # unused with PLAINTEXT, but librdkafka holds it
        KAFKA_SSL_KEY_PASSWORD=ssl_key,
        ATTRIBUTION_METRICS_PORT=str(port),
        ATTRIBUTION_LOG_FORMAT=log_format,
    )
    engine.put_settings(settings(project_id=PROJECT_ID))
    conversions, dlq = engine.reader("conversions"), engine.reader("dlq")
    run = start_worker(env, scratch)
    try:
        wait_ready(run, port)
        engine.produce(traffic())
        dlq_user = USERS[2].encode()
        engine.produce_raw("goals", dlq_user, b'{"not json ' + dlq_user)
        bad = {"event_id": "sx-bad", "project_id": PROJECT_ID, "user_id": USERS[2], "ts": "soon"}
        engine.produce_raw("goals", dlq_user, json.dumps(bad).encode())
        conversions.until(
            lambda rs: {r["event"] for r in rs if r["campaign_id"] == "camp-x"} >= {"signup", "purchase"},
            what="the conversions of camp-x",
        )
        dlq.until(lambda rs: len(rs) >= 2, what="two DLQ records")
        bodies = {path: http_get(port, path) for path in ("/metrics", "/healthz", "/readyz")}
    finally:
        code = run.stop()
    output = run.output()
    assert code == 0, output[-3000:]
    assert all(status == 200 for status, _ in bodies.values()), bodies
    assert "DEBUG" in output or '"level": "DEBUG"' in output, "the worker did not log at DEBUG"

    secrets = [secured.password, secured.admin_password, sasl, ssl_key]
    for where, text in [("stdout+stderr", output), *((p, body) for p, (_, body) in bodies.items())]:
        for s in secrets:
            assert s not in text, f"a secret appears in {where}"
        for user in USERS:
            assert user not in text, f"raw user key {user} appears in {where}"
    assert "@127.0.0.1" not in output, "REDIS_URL's login part appears in the logs"
    ready = bodies["/readyz"][1]
    assert PROJECT_ID not in ready, f"/readyz lists project ids: {ready}"

    if log_format == "json":
        lines = [line for line in run.err.read_text().splitlines() if line.strip()]
        assert lines, "no log line on stderr"
        for line in lines:
            record = _json_object(line)
            assert {"timestamp", "level", "logger", "message"} <= set(record), line


def _json_object(line: str) -> dict[str, Any]:
    try:
        record = json.loads(line)
    except ValueError:
        raise AssertionError(f"a stderr line is not JSON: {line!r}") from None
    assert isinstance(record, dict), line
    return record


@pytest.mark.parametrize("case", ["wrong password", "database path /zz", "not a Redis scheme"])
def test_a_bad_redis_url_is_refused_without_its_password(
    case: str, engine: Engine, secured: Secured, scratch: Path
) -> None:
    wrong = secret("wrong-pw")
    url = {
        "wrong password": secured.server.url_for(USER, wrong, db=0),
        "database path /zz": secured.url.replace("/0", "/zz"),
        "not a Redis scheme": secured.url.replace("redis://", "http://"),
    }[case]
    env = worker_env(engine.config, REDIS_URL=url, ATTRIBUTION_METRICS_PORT="0")
    run = start_worker(env, scratch)
    code = wait_exit(run)
    output = run.output()
    assert code != 0, output
    assert "REDIS_URL" in output, output
    for s in (wrong, secured.password, secured.admin_password):
        assert s not in output, f"a password appears in the error output:\n{output}"
    assert "Traceback" not in output, output
