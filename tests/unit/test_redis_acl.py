"""``acl_rule`` grants every Redis command the engine sends, and nothing else: the commands are read
from the Lua scripts and from the redis-py calls of the code, so adding a command without adding it
to ``WORKER_COMMANDS`` fails here (the integration tests then run a worker under that ACL)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import redis

from attribution.errors import BadSettings
from attribution.state.router import REBUILD_COMMANDS, WORKER_COMMANDS, acl_rule, connect

PACKAGE = Path(__file__).resolve().parents[2] / "attribution"
#: names a Redis client, pipeline or node connection goes by in the code
RECEIVERS = {"client", "conn", "pipe", "redis_connection"}
#: redis-py methods that send no command of their own
NOT_COMMANDS = {"pipeline", "execute", "close", "get_node", "get_primaries", "initialize"}
#: redis-py methods whose command is not their name
RENAMED = {"scan_iter": "scan", "script_load": "script|load"}
REBUILD_ONLY = {"attribution/state/redis_store.py:wipe", "attribution/state/redis_store.py:_unlink"}


def _receiver(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _command(call: ast.Call, method: str) -> str:
    if method == "execute_command":
        first = call.args[0]
        assert isinstance(first, ast.Constant) and isinstance(first.value, str), ast.unparse(call)
        return "|".join(first.value.lower().split()[:2])
    if method in RENAMED:
        return RENAMED[method]
    assert hasattr(redis.Redis, method), f"{method}: not a redis-py command; update this test's tables"
    return method


def sent_commands() -> dict[str, set[str]]:
    """command -> where it is sent ("path:function"), for every module that talks to Redis."""
    found: dict[str, set[str]] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE.parent))
        tree = ast.parse(path.read_text())
        imports = {
            n.module if isinstance(n, ast.ImportFrom) else a.name
            for n in ast.walk(tree)
            if isinstance(n, ast.Import | ast.ImportFrom)
            for a in n.names
        }
        if "devkit" in rel or not any(str(m).split(".")[0] == "redis" for m in imports):
            continue
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef):
                continue
            for call in ast.walk(func):
                if not (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)):
                    continue
                method = call.func.attr
                if _receiver(call.func.value) in RECEIVERS and method not in NOT_COMMANDS:
                    found.setdefault(_command(call, method), set()).add(f"{rel}:{func.name}")
    return found


def script_commands() -> set[str]:
    calls = re.compile(r"""redis\.p?call\(\s*['"]([A-Za-z]+)['"]""")
    return {
        c.lower()
        for path in (PACKAGE / "state" / "lua").glob("*.lua")
        for c in calls.findall(path.read_text())
    }


def test_the_scripts_need_only_granted_commands() -> None:
    assert script_commands() - set(WORKER_COMMANDS) == set()
    assert {"get", "set", "hget", "hset"} <= script_commands()  # the regex does find them


def test_every_command_the_code_sends_is_granted() -> None:
    sent = sent_commands()
    assert {"evalsha", "info", "hmget", "hvals"} <= set(sent), sorted(sent)  # the scan does find them
    missing = {c: sorted(where) for c, where in sent.items() if c not in WORKER_COMMANDS + REBUILD_COMMANDS}
    assert missing == {}, f"add these to WORKER_COMMANDS (attribution/state/router.py): {missing}"
    for command in REBUILD_COMMANDS:  # what only `attribution rebuild` sends stays out of the worker's
        assert sent.get(command, set()) <= REBUILD_ONLY, (command, sent.get(command))


def test_the_rule_confines_keys_and_channels() -> None:
    rule = acl_rule("attribution").split()
    assert rule[:3] == ["~attribution:*", "resetchannels", "-@all"]
    assert {c.removeprefix("+") for c in rule[3:]} == set(WORKER_COMMANDS)
    assert not any(word.startswith("+@") or word in {"allkeys", "~*", "allcommands"} for word in rule)
    assert "+scan" not in rule and "+scan" in acl_rule("attribution", rebuild=True).split()


def test_glob_characters_of_the_prefix_are_escaped() -> None:
    assert acl_rule(r"app*[1]?\x").split()[0] == r"~app\*\[1\]\?\\x:*"


def test_a_tls_option_on_a_plain_url_is_a_bad_setting_without_the_password() -> None:
    with pytest.raises(BadSettings) as caught:
        connect("redis://app:pw-1234-secret@127.0.0.1:1/0?ssl_ca_certs=/etc/ca.pem")
    assert caught.value.field == "REDIS_URL"
    assert "rediss://" in caught.value.reason and "pw-1234-secret" not in str(caught.value)
