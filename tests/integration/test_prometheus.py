"""deploy/prometheus and deploy/grafana against promtool and a real Prometheus scraping a real worker.

Static checks: the PrometheusRule holds exactly the groups of alerts.yml, every alert carries a
severity, a summary and a description and has a promtool unit test where it fires and one where it
does not, the compose scrape config names the worker's metrics endpoint, and every dashboard query
uses the provisioned datasource and ``$__rate_interval``. promtool: ``check rules``, ``check config``
and ``test rules`` pass. Live: a worker in a thread, fed sends, clicks, goals and a bad record, is
scraped every second by a real ``prometheus`` (127.0.0.1 only) that evaluates alerts.yml; the target
is up, the key series exist, the rules evaluate healthy, and every query of every panel of every
dashboard returns a number (not only NaN) once the Grafana variables are substituted, while
events keep flowing.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from attribution.devkit.embedded import free_port
from attribution.infra.config import Config
from attribution.infra.http import METRICS_PATH
from attribution.infra.metrics import Metrics
from tests.support.kafka import Engine, engine_config
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
    "attribution_assigned_partitions == 9",
    "attribution_state_conflicts_total",
    "attribution_recovered_batches_total",
    f'attribution_settings_version{{project="{PROJECT}"}} == 1',
    "process_resident_memory_bytes > 0",
    "process_cpu_seconds_total",
    "process_start_time_seconds > 0",
    "python_info",
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


def with_target(expr: str, instance: str) -> str:
    """``expr`` (a selector, then maybe a filter like ``> 0``) restricted to the live worker's series."""
    matchers = f'job="{JOB}", instance="{instance}"'
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
    assert len(rules) >= 9
    for rule in rules:
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), rule["alert"]
        assert rule["annotations"]["summary"].strip(), rule["alert"]
        assert len(rule["annotations"]["description"]) > 80, rule["alert"]
        assert f'job="{JOB}"' in rule["expr"], f"{rule['alert']} does not select the worker job"
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


def test_compose_prometheus_scrapes_the_workers_metrics_endpoint() -> None:
    config = load_yaml(COMPOSE_CONFIG)
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    (job,) = [c for c in config["scrape_configs"] if c["job_name"] == JOB]
    assert job.get("metrics_path", "/metrics") == METRICS_PATH
    port = Config.model_fields["metrics_port"].default
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets == [f"worker-1:{port}", f"worker-2:{port}"]


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
    """Every sample name a worker's /metrics can hold (a counter family ``x`` shows as ``x_total``)."""
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_count", "_sum", "_created"),
        "info": ("_info",),
    }
    return {
        family.name + suffix
        for family in Metrics().registry.collect()
        for suffix in suffixes.get(family.type, ("",))
    }


def test_alerts_and_dashboards_name_only_series_the_worker_exports() -> None:
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
    assert not unknown, f"series no worker exports: {unknown}"


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


# --- a real Prometheus scraping a real worker ----------------------------------------------------


@dataclass
class Live:
    prometheus: PrometheusServer
    instance: str  # the worker's instance label, 127.0.0.1:<port>


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


@pytest.fixture(scope="module")
def live(kafka_bootstrap: str, redis_url: str) -> Iterator[Live]:
    require(
        "prometheus", "scraping a worker with a real Prometheus (target, series, rules, dashboard queries)"
    )
    engine = Engine(engine_config(kafka_bootstrap, redis_url, uuid.uuid4().hex[:8]))
    try:
        engine.put_settings(settings())
        port = free_port()
        worker = engine.worker_thread(metrics_port=port, metrics_host="127.0.0.1")
        try:
            instance = f"127.0.0.1:{port}"
            config = scrape_config(JOB, [instance], [ALERTS], interval_s=1)
            with start_prometheus(config) as prometheus:
                engine.produce([e for i in range(12) for e in user_events("burst", i, T0 + i)])
                engine.produce_raw("goals", b"prom-bad", b"not json")
                trickle = Trickle(engine)
                try:
                    yield Live(prometheus, instance)
                finally:
                    trickle.stop()
        finally:
            worker.stop()
    finally:
        engine.close()


def wait_for(live: Live, expr: str, timeout_s: float = 45.0) -> list[dict[str, Any]]:
    def answer() -> list[dict[str, Any]] | None:
        return live.prometheus.query(expr) or None

    try:
        return poll(answer, f"PromQL `{expr}` to return data", timeout_s)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nprometheus log:\n{live.prometheus.log_tail()}") from None


def test_prometheus_scrapes_the_worker_and_the_target_is_up(live: Live) -> None:
    def up_target() -> dict[str, Any] | None:
        for target in live.prometheus.get("/api/v1/targets")["activeTargets"]:
            if target["labels"]["instance"] == live.instance and target["health"] == "up":
                return dict(target)
        return None

    target = poll(up_target, f"target {live.instance} to be up")
    assert target["labels"]["job"] == JOB
    assert target["scrapeUrl"] == f"http://{live.instance}{METRICS_PATH}"
    assert target["lastError"] == ""
    wait_for(live, f'up{{job="{JOB}", instance="{live.instance}"}} == 1')


def test_the_worker_exports_every_key_series_to_prometheus(live: Live) -> None:
    for expr in KEY_SERIES:
        wait_for(live, with_target(expr, live.instance))
    names = live.prometheus.get(
        "/api/v1/label/__name__/values", [("match[]", f'{{job="{JOB}", instance="{live.instance}"}}')]
    )
    families = {re.sub(r"_(bucket|count|sum|total|created|info)$", "", n) for n in names}
    for family in ("attribution_events", "attribution_batch_seconds", "attribution_redis_seconds"):
        assert family in families, sorted(families)


def test_every_dashboard_query_returns_a_number_for_a_scraped_worker(live: Live) -> None:
    wait_for(live, with_target('attribution_consumer_lag{topic=~".+goals"}', live.instance))
    wait_for(live, with_target("attribution_tallies_published_total > 0", live.instance))
    # a multi-value variable is a regex; Grafana escapes it for a PromQL string: 127\\.0\\.0\\.1
    instance = re.escape(live.instance).replace("\\", "\\\\")
    values = {**GRAFANA_BUILTINS, "job": JOB, "instance": instance}
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
    assert len(queries) >= 25


def test_dashboard_variables_list_the_scraped_worker(live: Live) -> None:
    wait_for(live, with_target("attribution_build_info", live.instance))
    expected = {"job": JOB, "instance": live.instance}
    for path in dashboards():
        for variable in json.loads(path.read_text())["templating"]["list"]:
            query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
            found = re.fullmatch(r"label_values\((.+), (\w+)\)", query)
            assert found, f"{path.name}: ${variable['name']} is not a label_values() query: {query}"
            selector = substitute(found.group(1), {"job": JOB})
            label_values = live.prometheus.get(
                f"/api/v1/label/{found.group(2)}/values", [("match[]", selector)]
            )
            assert expected[variable["name"]] in label_values, (variable["name"], label_values)


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
    # the worker is up and ready: once a few scrapes are in, the alerts about a missing, unreachable
    # or unready worker are not even pending (they may be for the first seconds)
    worker_alerts = {"AttributionWorkerDown", "AttributionNoWorker", "AttributionWorkerNotReady"}

    def quiet() -> bool | None:
        active = {a["labels"]["alertname"] for a in live.prometheus.get("/api/v1/alerts")["alerts"]}
        return True if not active & worker_alerts else None

    poll(quiet, f"none of {sorted(worker_alerts)} to be pending or firing", 30)
