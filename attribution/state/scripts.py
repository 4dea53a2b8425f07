"""Lua scripts shipped beside this module, loaded once per server and called by SHA (EVALSHA).

``attribution.state.router`` runs them and reloads them on a server that lost them (NOSCRIPT).
"""

from __future__ import annotations

import hashlib
from importlib import resources


class Script:
    """One ``lua/<name>.lua`` file: its source and the SHA-1 Redis names it by."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.source = resources.files("attribution.state").joinpath(f"lua/{name}.lua").read_text()
        self.sha = hashlib.sha1(self.source.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA-1


LOAD = Script("load")
JOURNAL = Script("journal")
USERS = Script("users")
SETTLE = Script("settle")
COUNTERS = Script("counters")
TALLY_ACK = Script("tally_ack")
TOUCH = Script("touch")
SETTINGS = Script("settings")
SCRIPTS = (LOAD, JOURNAL, USERS, SETTLE, COUNTERS, TALLY_ACK, TOUCH, SETTINGS)
