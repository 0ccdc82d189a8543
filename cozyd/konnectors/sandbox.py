"""The command line a konnector (or an app's service) runs under.

cozy-stack runs ``<konnectors.cmd> <workdir or file>`` with nsjail in
production (``scripts/konnector-nsjail-node-run.sh``). cozyd builds the
equivalent with bubblewrap, as one argv::

    [wrapper...] setsid prlimit --data --cpu --nproc --fsize --nofile --
        [setpriv --reuid --regid --clear-groups --]     (cozyd run as root)
        bwrap --unshare-all [--share-net] --die-with-parent --disable-userns
              --ro-bind /usr ... --proc /proc --dev /dev --tmpfs /tmp
              --ro-bind <workdir> /usr/src/konnector --chdir ...
        <cmd or node> /usr/src/konnector[/<file>]

- new mount, PID, IPC, UTS, cgroup and user namespaces (and network ones
  unless ``network``): the konnector sees its own processes only, the
  system's programs and libraries read-only, its code read-only, a private
  ``/tmp`` of ``tmp_size`` bytes, and nothing else — no configuration
  directory, no keys, no data directory, no other instance;
- rlimits (``prlimit``) on memory (the data segment: Node reserves huge
  address ranges it never touches, so an address-space limit would only
  break it), CPU seconds, processes, the size of a written file, open
  files; when cozyd runs as root the run is given an unprivileged uid
  first (``run_as``), which also makes the process limit count;
- ``setsid``: the run is its own process group, so stopping it (TERM, then
  KILL) reaches every process it started; with bubblewrap the PID
  namespace dies with its first process anyway.

``sandbox = none`` runs the same command without bubblewrap (the limits
still apply); it must be chosen explicitly: where bubblewrap cannot create
namespaces, ``check`` refuses to run konnectors with a clear error.
"""

from __future__ import annotations

import os
import shlex
import shutil
from collections.abc import Sequence
from typing import Any

import attrs

#: Where the konnector's code is seen inside the sandbox (nsjail's place).
CODE_MOUNT = "/usr/src/konnector"
#: Host paths bound read-only, when they exist (programs, libraries, TLS, DNS).
SYSTEM_BINDS = (
    "/usr",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/alternatives",
)
#: Top-level directories that are symlinks into /usr on merged-/usr systems.
TOP_LEVEL = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")


class SandboxUnavailable(Exception):
    """Konnectors cannot run here as configured (message says why and how)."""


@attrs.frozen
class Limits:
    memory: int = 1024**3
    cpu_time: int = 1000
    processes: int = 512
    file_size: int = 1024**3
    open_files: int = 128
    tmp_size: int = 256 * 1024**2


@attrs.frozen
class SandboxSettings:
    #: ``"bwrap"`` or ``"none"``.
    mode: str = "bwrap"
    bwrap: str = "bwrap"
    #: The konnector command (``<cmd> <dir or file>``); empty: node.
    cmd: str = ""
    wrapper: tuple[str, ...] = ()
    network: bool = True
    limits: Limits = Limits()
    #: (uid, gid) used when cozyd runs as root.
    run_as: tuple[int, int] = (65534, 65534)
    kill_grace: float = 5.0
    #: Host paths the konnector must never see even when they sit under a
    #: bound tree (config dir, data dir, files): hidden under an empty tmpfs.
    hidden: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Any) -> SandboxSettings:
        get = config.get
        uid, _, gid = get("konnectors", "run_as").partition(":")
        hidden = [config.data_dir, config.fs_root]
        if config.source and config.source != "(defaults)":
            hidden.append(os.path.dirname(os.path.abspath(config.source)))
        return cls(
            mode=get("konnectors", "sandbox"),
            bwrap=get("konnectors", "bwrap"),
            cmd=get("konnectors", "cmd"),
            wrapper=tuple(shlex.split(get("konnectors", "wrapper"))),
            network=get("konnectors", "network"),
            limits=Limits(
                memory=get("konnectors", "memory"),
                cpu_time=get("konnectors", "cpu_time"),
                processes=get("konnectors", "processes"),
                file_size=get("konnectors", "file_size"),
                open_files=get("konnectors", "open_files"),
                tmp_size=get("konnectors", "tmp_size"),
            ),
            run_as=(int(uid or 65534), int(gid or uid or 65534)),
            kill_grace=get("konnectors", "kill_grace"),
            hidden=tuple(os.path.realpath(p) for p in hidden if p),
        )


def _which(name: str) -> str:
    found = shutil.which(name) if os.sep not in name else name
    if not found or not os.access(found, os.X_OK):
        raise SandboxUnavailable(f"{name} is not installed (not found on PATH)")
    return os.path.realpath(found) if os.sep not in name else found


def runner(settings: SandboxSettings) -> list[str]:
    """The konnector command: ``cmd`` split, or node's real path."""
    if settings.cmd:
        words = shlex.split(settings.cmd)
        words[0] = _which(words[0])
        return words
    return [_which("node")]


def limits_prefix(settings: SandboxSettings) -> list[str]:
    limits = settings.limits
    prefix = [
        _which("setsid"),
        _which("prlimit"),
        f"--data={limits.memory}",
        f"--cpu={limits.cpu_time}",
        f"--nproc={limits.processes}",
        f"--fsize={limits.file_size}",
        f"--nofile={limits.open_files}",
        "--",
    ]
    if os.geteuid() == 0:
        uid, gid = settings.run_as
        prefix += [
            _which("setpriv"),
            f"--reuid={uid}",
            f"--regid={gid}",
            "--clear-groups",
            "--",
        ]
    return prefix


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def bwrap_args(
    settings: SandboxSettings, code_dir: str, extra_ro: Sequence[str] = ()
) -> list[str]:
    """bubblewrap's options: namespaces, the read-only system, the code at
    ``CODE_MOUNT``, a private /tmp; ``extra_ro``: more host paths needed
    read-only (a runner outside /usr)."""
    uid, gid = settings.run_as if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    args = [
        _which(settings.bwrap),
        "--unshare-all",
        "--unshare-user",
        *(["--share-net"] if settings.network else []),
        "--die-with-parent",
        "--disable-userns",
        "--uid",
        str(uid),
        "--gid",
        str(gid),
        "--hostname",
        "konnector",
    ]
    bound: list[str] = []
    for top in TOP_LEVEL:
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
            bound.append(top)
    for path in (*SYSTEM_BINDS, *extra_ro):
        if os.path.exists(path) and not any(_under(path, b) for b in bound):
            args += ["--ro-bind", path, path]
            bound.append(path)
    # What must stay unseen even if it lives under a bound tree.
    for path in settings.hidden:
        if any(_under(path, b) for b in bound) and os.path.isdir(path):
            args += ["--tmpfs", path]
    args += ["--proc", "/proc", "--dev", "/dev"]
    args += ["--size", str(settings.limits.tmp_size), "--tmpfs", "/tmp"]
    parent = os.path.dirname(CODE_MOUNT)
    if any(_under(parent, b) for b in bound):
        args += ["--tmpfs", parent]  # a writable place for the mount point
    args += [
        "--ro-bind",
        code_dir,
        CODE_MOUNT,
        "--chdir",
        CODE_MOUNT,
        # As nsjail's script; bubblewrap itself adds PWD.
        "--setenv",
        "HOME",
        CODE_MOUNT,
        "--",
    ]
    return args


def command_line(settings: SandboxSettings, code_dir: str, entry: str = "") -> list[str]:
    """The whole argv of one run of the code in ``code_dir``; ``entry``: a
    file of it to run instead of the folder (``on_delete_account``)."""
    run = runner(settings)
    prefix = [*settings.wrapper, *limits_prefix(settings)]
    if settings.mode == "none":
        target = os.path.join(code_dir, entry) if entry else code_dir
        return [*prefix, *run, target]
    real = os.path.realpath(run[0])
    extra = [real] if not _under(real, "/usr") else []
    target = f"{CODE_MOUNT}/{entry}" if entry else CODE_MOUNT
    return [*prefix, *bwrap_args(settings, code_dir, extra), *run, target]


def probe_command(settings: SandboxSettings) -> list[str]:
    """A run of ``true`` in the same namespaces: does bubblewrap work here?"""
    return [
        *limits_prefix(settings),
        *bwrap_args(settings, "/usr/bin"),
        _which("true"),
    ]


def unavailable_message(detail: str) -> str:
    return (
        "konnectors cannot run: bubblewrap cannot create namespaces here "
        f"({detail.strip() or 'no reason given'}); allow unprivileged user "
        "namespaces (or run in a container that permits them), or set "
        "[konnectors] sandbox = none to run konnectors without a sandbox"
    )
