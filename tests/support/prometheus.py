"""A real Prometheus server (and promtool) for integration tests.

``start_prometheus`` runs the ``prometheus`` binary (Debian's package: ``apt-get install prometheus``)
on a free 127.0.0.1 port with a temporary config, rule files and storage directory, waits until it
is ready, and stops it and removes every file afterwards. ``require`` skips the calling test, saying
what is skipped and how to install the binary, when it is missing.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml

from attribution.devkit.embedded import free_port

INSTALL_HINT = (
    "install it with `apt-get install prometheus` (Debian/Ubuntu: it brings prometheus and promtool)"
)
T = TypeVar("T")


def binary(name: str) -> str | None:
    """Path of ``name`` (``prometheus`` or ``promtool``) on PATH or in /usr/bin, else None."""
    found = shutil.which(name)
    if found is None and Path("/usr/bin", name).is_file():
        found = f"/usr/bin/{name}"
    return found


def require(name: str, what: str) -> str:
    """Path of ``name``; skips the test (naming ``what`` is skipped and how to install) without it."""
    path = binary(name)
    if path is None:
        pytest.skip(f"{name} is not installed, so {what} is skipped: {INSTALL_HINT}")
    return path


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``promtool ARGS`` (skips without promtool); the caller asserts on the return code."""
    tool = require("promtool", f"`promtool {args[0]} {args[1]}`" if len(args) > 1 else "promtool")
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def outcome(done: subprocess.CompletedProcess[str]) -> str:
    """The command line, return code and output of a finished command, for assertion messages."""
    return f"$ {' '.join(done.args)}\nexit code {done.returncode}\n{done.stdout}{done.stderr}"


def poll(check: Callable[[], T | None], what: str, timeout_s: float = 45.0, every_s: float = 0.25) -> T:
    """The first non-None answer of ``check``; fails naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        answer = check()
        if answer is not None:
            return answer
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(every_s)


@dataclass
class PrometheusServer:
    """A running ``prometheus``: its URL, process, log file and files (all under ``directory``)."""

    url: str
    process: subprocess.Popen[bytes]
    directory: Path
    log_path: Path

    def get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> Any:
        """``data`` of a successful Prometheus HTTP API answer (``path`` like ``/api/v1/query``)."""
        query = urllib.parse.urlencode(list(params))
        url = f"{self.url}{path}?{query}" if query else f"{self.url}{path}"
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                body = json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise AssertionError(
                f"GET {url}: HTTP {exc.code}: {exc.read().decode(errors='replace')}"
            ) from exc
        assert body.get("status") == "success", f"GET {url}: {body}"
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector of ``expr`` now (a scalar or string answer is one pseudo-sample)."""
        data = self.get("/api/v1/query", [("query", expr)])
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return list(data["result"])

    def log_tail(self, lines: int = 40) -> str:
        if not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def scrape_config(
    jobs: Mapping[str, Sequence[str]], rule_files: Sequence[Path], interval_s: int = 1
) -> dict[str, Any]:
    """A Prometheus config scraping, for each job name of ``jobs``, its targets (``host:port``, at
    /metrics) and evaluating ``rule_files``."""
    return {
        "global": {
            "scrape_interval": f"{interval_s}s",
            "scrape_timeout": f"{interval_s}s",
            "evaluation_interval": f"{interval_s}s",
        },
        "rule_files": [str(p) for p in rule_files],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": list(targets)}]} for job, targets in jobs.items()
        ],
    }


@contextmanager
def start_prometheus(config: dict[str, Any], timeout_s: float = 30.0) -> Iterator[PrometheusServer]:
    """A ``prometheus`` on 127.0.0.1 with ``config``, ready to answer; stopped and its files removed
    on exit. A port taken between choosing and binding it is retried on another."""
    exe = require("prometheus", "a test against a real Prometheus server")
    with tempfile.TemporaryDirectory(prefix="prometheus-") as tmp:
        directory = Path(tmp)
        config_path = directory / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        server = None
        for attempt in range(3):
            port = free_port()
            log_path = directory / f"prometheus-{attempt}.log"
            with log_path.open("wb") as log:
                process = subprocess.Popen(
                    [
                        exe,
                        f"--config.file={config_path}",
                        f"--storage.tsdb.path={directory / 'data'}",
                        "--storage.tsdb.retention.time=1h",
                        f"--web.listen-address=127.0.0.1:{port}",
                    ],
                    cwd=directory,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            candidate = PrometheusServer(f"http://127.0.0.1:{port}", process, directory, log_path)
            try:
                if _wait_ready(candidate, timeout_s):
                    server = candidate
                    break
            except BaseException:
                candidate.stop()
                raise
            candidate.stop()
            if "address already in use" not in candidate.log_tail():
                raise AssertionError(f"prometheus did not start:\n{candidate.log_tail()}")
        if server is None:
            raise AssertionError("prometheus found no free port in 3 attempts")
        try:
            yield server
        finally:
            server.stop()


def _wait_ready(server: PrometheusServer, timeout_s: float) -> bool:
    """True once ``/-/ready`` answers 200; False if the process exits first; fails on timeout."""
    deadline = time.monotonic() + timeout_s
    while server.process.poll() is None:
        try:
            with urllib.request.urlopen(f"{server.url}/-/ready", timeout=2) as answer:
                if answer.status == 200:
                    return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"prometheus not ready after {timeout_s:.0f} s:\n{server.log_tail()}")
        time.sleep(0.1)
    return False
