"""deploy/prometheus and deploy/grafana against promtool and a real Prometheus scraping a real
worker and a real ``attribution serve``.

Static checks: the PrometheusRule holds exactly the groups of alerts.yml, every alert carries a
severity, a summary and a description and has a promtool unit test where it fires and one where it
does not, the compose scrape config names the worker's and the API's metrics endpoints, and every
dashboard query uses the provisioned datasource and ``$__rate_interval``. promtool: ``check rules``,
``check config`` and ``test rules`` pass. Live: a worker in a thread, fed sends, clicks, goals and a
bad record, and ``attribution serve`` in a child process (reading the worker's outputs, answering a
few API requests and holding an event stream open) are scraped every second by a real
``prometheus`` (127.0.0.1 only) that evaluates alerts.yml, as jobs ``attribution-worker`` and
``attribution-api``; both targets are up, the key series of each exist, the rules evaluate healthy,
and every query of every panel of every dashboard returns a number (not only NaN) once the Grafana
variables are substituted, while events keep flowing.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import math
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from attribution.api.metrics import ApiMetrics
from attribution.devkit.embedded import free_port
from attribution.infra.config import Config
from attribution.infra.http import METRICS_PATH, READY_PATH
from attribution.infra.metrics import Metrics
from tests.support.kafka import Engine, engine_config, env_of
from tests.support.prometheus import (
    PrometheusServer,
    outcome,
    poll,
    promtool,
    require,
    scrape_config,
    start_prometheus,
)
from tests.support.scenarios import PROJECT, click, goal, send, settings

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
COMPOSE_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
PROMETHEUS_RULE = ROOT / "deploy" / "k8s" / "prometheusrule.yaml"
GRAFANA = ROOT / "deploy" / "grafana"
DATASOURCES = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
JOB = "attribution-worker"
API_JOB = "attribution-api"
#: The job each alert group selects.
GROUP_JOBS = {"attribution": JOB, "attribution-api": API_JOB}
T0 = int(time.time() * 1000) - 3600_000
MIN = 60_000

# What the worker must export once it has processed the traffic of the `live` fixture, as PromQL
# that returns at least one sample (the job and instance matchers are added to every selector).
KEY_SERIES = (
    "up == 1",
    'attribution_build_info{version!="", runtime="confluent"}',
    "attribution_ready == 1",
    'attribution_events_total{outcome="applied"} > 0',
    'attribution_events_total{outcome="dlq"} > 0',
    'attribution_dlq_total{topic=~".+goals"} > 0',
    'attribution_conversions_total{event="purchase", basis="send"} > 0',
    'attribution_conversions_total{event="purchase", basis="click"} > 0',
    'attribution_conversions_total{event="signup", basis="send"} > 0',
    'attribution_amount_missing_total{event="purchase"} > 0',
    "attribution_tallies_published_total > 0",
    'attribution_batch_seconds_bucket{stage="total", le="+Inf"} > 0',
    'attribution_batch_seconds_count{stage="process"} > 0',
    "attribution_batch_records_count > 0",
    'attribution_redis_seconds_bucket{le="+Inf"} > 0',
    'attribution_consumer_lag{topic=~".+sends"}',
    'attribution_consumer_lag{topic=~".+goals"}',
    'attribution_rebalances_total{kind="assign"} > 0',
    "attribution_assigned_partitions == 15",  # 5 input topics (identity included) x 3
    "attribution_state_conflicts_total",
    "attribution_recovered_batches_total",
    f'attribution_settings_version{{project="{PROJECT}"}} == 1',
    "process_resident_memory_bytes > 0",
    "process_cpu_seconds_total",
    "process_start_time_seconds > 0",
    "python_info",
)

# What `attribution serve` must export once it has read the worker's outputs and answered the
# requests of the `live` fixture (same conventions as KEY_SERIES).
API_KEY_SERIES = (
    "up == 1",
    'attribution_api_build_info{version!=""} == 1',
    "attribution_api_caught_up == 1",
    'attribution_api_records_total{topic="tallies"} > 0',
    'attribution_api_records_total{topic="conversions"} > 0',
    'attribution_api_requests_total{route="/v1/projects", method="GET", code="200"} > 0',
    'attribution_api_requests_total{route="/v1/projects/{project}/campaigns", method="GET", code="200"} > 0',
    'attribution_api_requests_total{route="/v1/projects/{project}/campaigns/{campaign}", code="404"} > 0',
    f'attribution_api_requests_total{{route="{READY_PATH}", code="200"}} > 0',
    'attribution_api_requests_total{route="/v1/events", code="200"} > 0',
    f'attribution_api_request_seconds_bucket{{route="{METRICS_PATH}", le="+Inf"}} > 0',
    'attribution_api_request_seconds_count{route="/"} > 0',
    "attribution_api_stream_clients == 1",
    "attribution_api_campaigns > 0",
    "attribution_api_conversions > 0",
    "process_resident_memory_bytes > 0",
    "process_start_time_seconds > 0",
)

# What Grafana puts in place of its variables when the dashboard is opened on the last 5 minutes.
GRAFANA_BUILTINS = {
    "__rate_interval": "15s",
    "__interval": "5s",
    "__interval_ms": "5000",
    "__range": "5m",
    "__range_s": "300",
    "__range_ms": "300000",
}


# --- helpers -------------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS)["groups"] for rule in group["rules"] if "alert" in rule]


def alert_groups() -> dict[str, list[dict[str, Any]]]:
    """The alerting rules of each group of alerts.yml."""
    return {
        group["name"]: [rule for rule in group["rules"] if "alert" in rule]
        for group in load_yaml(ALERTS)["groups"]
    }


def dashboards() -> list[Path]:
    found = sorted(GRAFANA.glob("*/*.json"))
    assert found, f"no dashboard under {GRAFANA}"
    return found


def panels_of(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Every panel, including those inside (collapsed) rows."""
    for panel in items:
        yield panel
        yield from panels_of(panel.get("panels", []))


def dashboard_queries() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expr) of every Prometheus query of every panel."""
    queries = []
    for path in dashboards():
        for panel in panels_of(json.loads(path.read_text())["panels"]):
            for target in panel.get("targets", []):
                if target.get("expr"):
                    queries.append((path.name, panel["title"], target["expr"]))
    assert queries, "the dashboards hold no query"
    return queries


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)\]\]|\$(\w+)")


def substitute(expr: str, values: dict[str, str]) -> str:
    """``expr`` with Grafana's ``$name``, ``${name}``, ``${name:fmt}`` and ``[[name]]`` replaced."""

    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        assert name in values, f"no test value for the Grafana variable ${name} in {expr}"
        return values[name]

    return _VARIABLE.sub(one, expr)


def with_target(expr: str, instance: str, job: str = JOB) -> str:
    """``expr`` (a selector, then maybe a filter like ``> 0``) restricted to one live target's series."""
    matchers = f'job="{job}", instance="{instance}"'
    name = re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr)
    assert name is not None, expr
    rest = expr[name.end() :]
    if rest.startswith("{"):
        return f"{name.group(0)}{{{matchers}, {rest[1:]}"
    return f"{name.group(0)}{{{matchers}}}{rest}"


# --- the files, without any binary ---------------------------------------------------------------


def test_prometheusrule_holds_exactly_the_groups_of_alerts_yml() -> None:
    rule = load_yaml(PROMETHEUS_RULE)
    assert (rule["apiVersion"], rule["kind"]) == ("monitoring.coreos.com/v1", "PrometheusRule")
    assert rule["metadata"]["labels"]["app.kubernetes.io/name"] == "attribution"
    assert rule["spec"]["groups"] == load_yaml(ALERTS)["groups"]


def test_every_alert_has_a_severity_a_summary_and_a_description() -> None:
    rules = alert_rules()
    assert len(rules) >= 11
    groups = alert_groups()
    assert set(groups) == set(GROUP_JOBS), "a group for the workers, one for the API"
    for group, grouped in groups.items():
        assert grouped, f"group {group} holds no alert"
        for rule in grouped:
            assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
            assert rule["annotations"]["summary"].strip(), rule["alert"]
            assert len(rule["annotations"]["description"]) > 80, rule["alert"]
            jobs = set(re.findall(r'job="([^"]*)"', rule["expr"]))
            assert jobs == {GROUP_JOBS[group]}, f"{rule['alert']} selects {jobs}, not {GROUP_JOBS[group]}"
    down = {r["alert"]: r["annotations"]["description"] for r in rules}
    for name in ("AttributionWorkerDown", "AttributionNoWorker"):
        assert "LostState" in down[name] and "attribution rebuild --yes" in down[name], name


def test_every_alert_has_a_unit_test_where_it_fires_and_one_where_it_does_not() -> None:
    suite = load_yaml(ALERTS_TEST)
    assert suite["rule_files"] == [ALERTS.name]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in suite["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
            for alert in check.get("exp_alerts") or []:
                assert {"summary", "description"} <= set(alert["exp_annotations"]), check["alertname"]
                assert "severity" in alert["exp_labels"], check["alertname"]
    names = {rule["alert"] for rule in alert_rules()}
    assert names - fires == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown quiet or resolved"


def test_compose_prometheus_scrapes_the_workers_and_the_api_metrics_endpoints() -> None:
    config = load_yaml(COMPOSE_CONFIG)
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    port = Config.model_fields["metrics_port"].default
    api_port = Config.model_fields["api_port"].default
    expected = {JOB: [f"worker-1:{port}", f"worker-2:{port}"], API_JOB: [f"api:{api_port}"]}
    for name, targets in expected.items():
        (job,) = [c for c in config["scrape_configs"] if c["job_name"] == name]
        assert job.get("metrics_path", "/metrics") == METRICS_PATH
        assert [t for static in job["static_configs"] for t in static["targets"]] == targets, name


def test_dashboards_use_the_provisioned_datasource_and_rate_interval() -> None:
    (datasource,) = load_yaml(DATASOURCES)["datasources"]
    assert (datasource["uid"], datasource["type"]) == ("prometheus", "prometheus")
    for path in dashboards():
        board = json.loads(path.read_text())
        assert board["schemaVersion"] >= 39 and board["uid"], path.name
        ids = [p["id"] for p in panels_of(board["panels"])]
        assert len(ids) == len(set(ids)), f"{path.name}: panel ids repeat"
        for panel in panels_of(board["panels"]):
            if panel["type"] == "row":
                continue
            assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == datasource["uid"], panel["title"]
                windows = set(re.findall(r"\[([^\]]+)\]", target["expr"]))
                assert windows <= {"$__rate_interval", "$__range"}, f"{panel['title']}: {windows}"
        for variable in board["templating"]["list"]:
            assert variable["datasource"]["uid"] == datasource["uid"], variable["name"]


def exported_series() -> set[str]:
    """Every sample name a worker's or the API's /metrics can hold (a counter family ``x`` shows as
    ``x_total``)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    return {
        family.name + suffix
        for registry in (Metrics().registry, ApiMetrics().registry)
        for family in registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def test_alerts_and_dashboards_name_only_series_the_worker_or_the_api_exports() -> None:
    exported = exported_series()
    used: dict[str, set[str]] = {}
    texts = [(r["alert"], r["expr"]) for r in alert_rules()]
    texts += [(f"{board} / {title}", expr) for board, title, expr in dashboard_queries()]
    for path in dashboards():
        for variable in json.loads(path.read_text())["templating"]["list"]:
            texts.append((f"{path.name} ${variable['name']}", variable["definition"]))
    for where, expr in texts:
        for name in re.findall(r"\b(?:attribution|process|python)_[a-z0-9_]+", expr):
            used.setdefault(name, set()).add(where)
    unknown = {name: sorted(places) for name, places in used.items() if name not in exported}
    assert not unknown, f"series no worker or API exports: {unknown}"


# --- promtool ------------------------------------------------------------------------------------


def test_alert_rules_pass_promtool_check_rules() -> None:
    done = promtool("check", "rules", str(ALERTS))
    assert done.returncode == 0, outcome(done)
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout, outcome(done)


def test_compose_prometheus_config_passes_promtool_check_config(tmp_path: Path) -> None:
    config = load_yaml(COMPOSE_CONFIG)
    config["rule_files"] = [str(tmp_path / "alerts.yml")]  # /etc/prometheus/alerts.yml in the container
    shutil.copy(ALERTS, tmp_path / "alerts.yml")
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    done = promtool("check", "config", str(tmp_path / "prometheus.yml"))
    assert done.returncode == 0, outcome(done)
    assert "SUCCESS" in done.stdout, outcome(done)


def test_alert_unit_tests_pass_promtool_test_rules() -> None:
    done = promtool("test", "rules", ALERTS_TEST.name, cwd=PROMETHEUS_DIR)
    assert done.returncode == 0, outcome(done)
    assert "SUCCESS" in done.stdout, outcome(done)


# --- a real Prometheus scraping a real worker and a real `attribution serve` --------------------


@dataclass
class Live:
    prometheus: PrometheusServer
    instance: str  # the worker's instance label, 127.0.0.1:<port>
    api_instance: str  # serve's instance label, 127.0.0.1:<port>


def user_events(tag: str, i: int, ts: int) -> list[Any]:
    """A user reached by a push and a web-push campaign, clicking the push, then buying (every third
    time without an amount) and signing up: conversions on the send and the click basis."""
    user, device = f"prom-{tag}-u{i}", f"prom-{tag}-d{i}"
    props = {"price": 1000, "qty": 2} if i % 3 else {"qty": 1}
    return [
        send(f"prom-{tag}-s{i}", "spring", device, ts, user=user),
        send(f"prom-{tag}-w{i}", "web", device, ts, user=user, channel="web_push"),
        click(f"prom-{tag}-c{i}", "spring", device, ts + MIN, user=user),
        goal(f"prom-{tag}-g{i}", "purchase", device, ts + 2 * MIN, user=user, **props),
        goal(f"prom-{tag}-x{i}", "signup", device, ts + 3 * MIN, user=user),
    ]


class Trickle:
    """Keeps one user's events a tick flowing, so that rates and latency quantiles have data."""

    def __init__(self, engine: Engine, every_s: float = 0.3) -> None:
        self.engine = engine
        self.every_s = every_s
        self.error: BaseException | None = None
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="trickle", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        i = 0
        try:
            while not self.stopped.wait(self.every_s):
                self.engine.produce(user_events("trickle", i, T0 + 10 * MIN + i * 100))
                i += 1
        except BaseException as exc:
            self.error = exc

    def stop(self) -> None:
        self.stopped.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), "the traffic thread did not stop"
        if self.error is not None:
            raise self.error


class ApiProcess:
    """``python -m attribution serve`` on 127.0.0.1:``port`` with the engine's Kafka settings and
    no Redis; its output goes to ``log_path``."""

    def __init__(self, config: Config, port: int, log_path: Path) -> None:
        env = env_of(config)
        del env["REDIS_URL"], env["ATTRIBUTION_METRICS_PORT"]  # serve needs no Redis, no metrics port
        env.update({"ATTRIBUTION_API_HOST": "127.0.0.1", "ATTRIBUTION_API_PORT": str(port)})
        self.port = port
        self.log_path = log_path
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "attribution", "serve"],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # pytest's Ctrl-C is not its stop signal
            )

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def get(self, path: str) -> tuple[int, bytes]:
        """Status and body of ``GET path`` (an error status is an answer too)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as answer:
                return int(answer.status), bytes(answer.read())
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()

    def ready(self) -> bool | None:
        """True once /readyz answers 200; None while it does not (yet); False if the process ended."""
        if self.process.poll() is not None:
            return False
        try:
            return True if self.get(READY_PATH)[0] == 200 else None
        except OSError:
            return None

    def stop(self) -> int:
        """SIGTERM, then the exit code (a kill after 20 s)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        return int(self.process.returncode)


def start_api(config: Config, directory: Path) -> ApiProcess:
    """A ready ``attribution serve``; a port taken between choosing and binding it is retried."""
    for attempt in range(3):
        api = ApiProcess(config, free_port(), directory / f"serve-{attempt}.log")
        try:
            state = poll(api.ready, "attribution serve to answer /readyz 200", 60)
        except BaseException:
            api.stop()
            raise
        if state:
            return api
        api.stop()
        if "cannot listen" not in api.log_tail():
            raise AssertionError(f"attribution serve exited:\n{api.log_tail()}")
    raise AssertionError("attribution serve found no free port in 3 attempts")


class StreamClient:
    """One client of serve's event stream (GET /v1/events), read in a thread until ``close()``."""

    def __init__(self, port: int) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        self.connection.request("GET", "/v1/events", headers={"Accept": "text/event-stream"})
        self.response = self.connection.getresponse()
        assert self.response.status == 200, self.response.status
        assert self.connection.sock is not None
        self.socket: socket.socket = self.connection.sock
        self.socket.settimeout(None)  # the reader blocks until close() shuts the socket down
        self.events: list[str] = []
        self.thread = threading.Thread(target=self._read, name="event-stream", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for line in self.response:
                if line.startswith(b"event:"):
                    self.events.append(line[6:].strip().decode())
        except (OSError, ValueError, http.client.HTTPException):
            pass  # closed by close()

    def close(self) -> None:
        with contextlib.suppress(OSError):  # already closed by the server
            self.socket.shutdown(socket.SHUT_RDWR)
        self.thread.join(10)
        self.response.close()
        self.connection.close()
        assert not self.thread.is_alive(), "the event stream reader did not stop"


def use_the_api(api: ApiProcess) -> None:
    """A few requests of a downstream reader: the projects, a project's campaigns once the workers'
    tallies have arrived (the topics' data, end to end), an unknown campaign, the page."""
    assert api.get("/v1/projects")[0] == 200

    def campaigns() -> bool | None:
        status, body = api.get(f"/v1/projects/{PROJECT}/campaigns")
        return True if status == 200 and json.loads(body)["campaigns"] else None

    poll(campaigns, f"GET /v1/projects/{PROJECT}/campaigns to list tallies")
    assert api.get(f"/v1/projects/{PROJECT}/campaigns/no-such-campaign")[0] == 404
    assert api.get("/")[0] == 200


@pytest.fixture(scope="module")
def live(kafka_bootstrap: str, redis_url: str) -> Iterator[Live]:
    require(
        "prometheus",
        "scraping a worker and `attribution serve` with a real Prometheus (targets, series, rules,"
        " dashboard queries)",
    )
    engine = Engine(engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8]))
    with tempfile.TemporaryDirectory(prefix="test-prometheus-") as scratch:
        try:
            engine.put_settings(settings())
            port = free_port()
            worker = engine.worker_thread(metrics_port=port, metrics_host="127.0.0.1")
            api: ApiProcess | None = None
            stream: StreamClient | None = None
            try:
                api = start_api(engine.config, Path(scratch))
                instance, api_instance = f"127.0.0.1:{port}", f"127.0.0.1:{api.port}"
                jobs = {JOB: [instance], API_JOB: [api_instance]}
                with start_prometheus(scrape_config(jobs, [ALERTS], interval_s=1)) as prometheus:
                    engine.produce([e for i in range(12) for e in user_events("burst", i, T0 + i)])
                    engine.produce_raw("goals", b"prom-bad", b"not json")
                    trickle = Trickle(engine)
                    try:
                        stream = StreamClient(api.port)
                        use_the_api(api)
                        yield Live(prometheus, instance, api_instance)
                    finally:
                        trickle.stop()
            finally:
                if stream is not None:
                    stream.close()
                code = api.stop() if api is not None else None
                worker.stop()
            assert api is not None
            assert code == 0, f"attribution serve exited with {code} after SIGTERM:\n{api.log_tail()}"
            assert stream is not None and stream.events[:1] == ["snapshot"], (
                "the stream starts with a snapshot"
            )
        finally:
            engine.close()


def wait_for(live: Live, expr: str, timeout_s: float = 45.0) -> list[dict[str, Any]]:
    def answer() -> list[dict[str, Any]] | None:
        return live.prometheus.query(expr) or None

    try:
        return poll(answer, f"PromQL `{expr}` to return data", timeout_s)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nprometheus log:\n{live.prometheus.log_tail()}") from None


@pytest.mark.parametrize(("job", "what"), [(JOB, "worker"), (API_JOB, "api")], ids=["worker", "api"])
def test_prometheus_scrapes_the_target_and_it_is_up(live: Live, job: str, what: str) -> None:
    instance = live.instance if what == "worker" else live.api_instance

    def up_target() -> dict[str, Any] | None:
        for target in live.prometheus.get("/api/v1/targets")["activeTargets"]:
            if target["labels"]["instance"] == instance and target["health"] == "up":
                return dict(target)
        return None

    target = poll(up_target, f"target {instance} to be up")
    assert target["labels"]["job"] == job
    assert target["scrapeUrl"] == f"http://{instance}{METRICS_PATH}"
    assert target["lastError"] == ""
    wait_for(live, f'up{{job="{job}", instance="{instance}"}} == 1')


def test_the_worker_exports_every_key_series_to_prometheus(live: Live) -> None:
    for expr in KEY_SERIES:
        wait_for(live, with_target(expr, live.instance))
    names = live.prometheus.get(
        "/api/v1/label/__name__/values", [("match[]", f'{{job="{JOB}", instance="{live.instance}"}}')]
    )
    families = {re.sub(r"_(bucket|count|sum|total|created|info)$", "", n) for n in names}
    for family in ("attribution_events", "attribution_batch_seconds", "attribution_redis_seconds"):
        assert family in families, sorted(families)


def test_the_api_exports_every_key_series_to_prometheus(live: Live) -> None:
    for expr in API_KEY_SERIES:
        wait_for(live, with_target(expr, live.api_instance, API_JOB))
    names = live.prometheus.get(
        "/api/v1/label/__name__/values", [("match[]", f'{{job="{API_JOB}", instance="{live.api_instance}"}}')]
    )
    # the API's registry is its own: no worker series under the API's job
    assert not [n for n in names if n.startswith("attribution_") and not n.startswith("attribution_api_")]


def grafana_values(live: Live) -> dict[str, str]:
    """Grafana's variables as the dashboard substitutes them for the live worker and API."""

    def regex(instance: str) -> str:
        # a multi-value variable is a regex; Grafana escapes it for a PromQL string: 127\\.0\\.0\\.1
        return re.escape(instance).replace("\\", "\\\\")

    return {
        **GRAFANA_BUILTINS,
        "job": JOB,
        "instance": regex(live.instance),
        "api_job": API_JOB,
        "api_instance": regex(live.api_instance),
    }


def test_every_dashboard_query_returns_a_number_for_the_scraped_worker_and_api(live: Live) -> None:
    wait_for(live, with_target('attribution_consumer_lag{topic=~".+goals"}', live.instance))
    wait_for(live, with_target("attribution_tallies_published_total > 0", live.instance))
    wait_for(live, with_target("attribution_api_conversions > 0", live.api_instance, API_JOB))
    values = grafana_values(live)
    queries = [(board, title, substitute(expr, values)) for board, title, expr in dashboard_queries()]

    def missing() -> list[str]:
        """Queries without a sample, or whose every sample is NaN (a quantile of no observation)."""
        return [
            f"{b} / {t}: {q}"
            for b, t, q in queries
            if not any(math.isfinite(float(s["value"][1])) for s in live.prometheus.query(q))
        ]

    deadline = time.monotonic() + 30
    empty = missing()
    while empty and time.monotonic() < deadline:
        time.sleep(0.5)
        empty = missing()
    assert not empty, "dashboard queries without a number:\n" + "\n".join(empty)
    assert len(queries) >= 40
    assert sum("$api_job" in expr for _, _, expr in dashboard_queries()) >= 10, "the API's panels"


def test_dashboard_variables_list_the_scraped_worker_and_api(live: Live) -> None:
    wait_for(live, with_target("attribution_build_info", live.instance))
    wait_for(live, with_target("attribution_api_build_info", live.api_instance, API_JOB))
    expected = {"job": JOB, "instance": live.instance, "api_job": API_JOB, "api_instance": live.api_instance}
    for path in dashboards():
        variables = json.loads(path.read_text())["templating"]["list"]
        assert {v["name"] for v in variables} == set(expected), path.name
        for variable in variables:
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            found = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
            assert found, f"{path.name}: ${variable['name']} is not a label_values() query: {query}"
            selector = substitute(found.group(1), {"job": JOB, "api_job": API_JOB})
            label_values = live.prometheus.get(
                f"/api/v1/label/{found.group(2)}/values", [("match[]", selector)]
            )
            # the worker's variables list the worker only, the API's the API only
            assert label_values == [expected[variable["name"]]], (variable["name"], label_values)


def test_alert_rules_load_into_prometheus_and_evaluate_healthy(live: Live) -> None:
    names = {rule["alert"] for rule in alert_rules()}

    def evaluated() -> list[dict[str, Any]] | None:
        rules = [r for g in live.prometheus.get("/api/v1/rules")["groups"] for r in g["rules"]]
        if len(rules) == len(names) and all(r["health"] == "ok" for r in rules):
            return rules
        return None

    try:
        rules = poll(evaluated, "every alert rule to be evaluated with health ok", 30)
    except AssertionError:
        groups = live.prometheus.get("/api/v1/rules")["groups"]
        raise AssertionError(
            json.dumps([(r["name"], r["health"], r.get("lastError")) for g in groups for r in g["rules"]])
        ) from None
    assert {r["name"] for r in rules} == names
    assert all(r["type"] == "alerting" for r in rules)
    # the worker and the API are up, ready and caught up: once a few scrapes are in, the alerts about
    # a missing, unreachable or unready target are not even pending (they may be for the first seconds)
    target_alerts = {
        "AttributionWorkerDown",
        "AttributionNoWorker",
        "AttributionWorkerNotReady",
        "AttributionApiDown",
        "AttributionApiNotCaughtUp",
    }
    assert {name for name in names if "Api" in name} <= target_alerts, "a new API alert: list it here"

    def quiet() -> bool | None:
        active = {a["labels"]["alertname"] for a in live.prometheus.get("/api/v1/alerts")["alerts"]}
        return True if not active & target_alerts else None

    poll(quiet, f"none of {sorted(target_alerts)} to be pending or firing", 30)
