"""CPU time of the servers a benchmark drives, read from ``/proc``.

Throughput on this 2-core machine depends on who gets the cores: cozyd's
Python runs on one core at a time, CouchDB's Erlang on both, and the load
generator takes its share. The CPU a server spends per request does not:
it says what one request costs each process, whatever the machine.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU of process ``pid`` (all its threads), or None when
    it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICK


def listening_pid(port: int) -> int | None:
    """The process holding the TCP socket that listens on ``port`` (on any
    address), found through ``/proc/net/tcp*`` and the processes' fds."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    local, state, inode = parts[1], parts[3], parts[9]
                    if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                        inodes.add(f"socket:[{inode}]")
        except OSError:
            continue
    if not inodes:
        return None
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return int(pid)
            except OSError:
                continue
    return None


class ServersCPU:
    """CPU seconds each named server spent between ``start`` and ``stop``."""

    def __init__(self, servers: Mapping[str, int] | None):
        self.servers = dict(servers or {})
        self._before: dict[str, float | None] = {}

    def start(self) -> None:
        self._before = {name: cpu_seconds(pid) for name, pid in self.servers.items()}

    def stop(self) -> dict[str, float]:
        spent = {}
        for name, pid in self.servers.items():
            before, after = self._before.get(name), cpu_seconds(pid)
            if before is not None and after is not None:
                spent[name] = after - before
        return spent
