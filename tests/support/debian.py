"""Build and try the Debian package in fresh bookworm roots (chroots).

``base_tarball`` makes (once, then from ``.cache/debian``) a minimal bookworm
root with ``mmdebstrap`` (or ``debootstrap``), from the mirrors this host's
apt uses. ``Chroot`` unpacks it in a temporary directory, mounts ``/proc``,
shares the apt and pip download caches of ``.cache/debian`` with it, runs
commands inside, and always unmounts before deleting it. ``build_packages``
copies the repository's files (``git ls-files``: nothing ignored, nothing
from outside) into a build root, installs the build dependencies with
``apt-get build-dep``, builds with ``dpkg-buildpackage`` and runs lintian.

Everything needs root (chroot, mount); ``host_problem`` tells why it cannot
run here, installing the bootstrap tool with apt-get when it is missing.
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Self

from tests.support.daemon import LISTENING, REPO

SUITE = "bookworm"
#: Where .cache/debian/wheels is seen in a root: the wheels of the lock files,
#: downloaded once (pip's HTTP cache stores nothing behind some proxies).
WHEELS = "/var/cache/cozyd-test-wheels"
#: Downloads kept between runs (the bootstrapped root, apt's .debs, wheels).
CACHE = Path(os.environ.get("COZYD_TEST_DEBIAN_CACHE") or Path(REPO) / ".cache" / "debian")
APT_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "TERM": "dumb",
}


class CommandFailed(AssertionError):
    pass


def _run(
    command: Sequence[str | os.PathLike],
    *,
    timeout: float = 900.0,
    env: dict[str, str] | None = None,
    check: bool = True,
    **kwargs,
) -> subprocess.CompletedProcess:
    done = subprocess.run(
        [str(c) for c in command],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env or APT_ENV,
        check=False,
        stdin=subprocess.DEVNULL,
        **kwargs,
    )
    if check and done.returncode != 0:
        raise CommandFailed(
            f"{shlex.join(map(str, command))} exited {done.returncode}:\n"
            f"{done.stdout[-6000:]}\n{done.stderr[-6000:]}"
        )
    return done


# -- the host -------------------------------------------------------------------


def host_problem() -> str | None:
    """Why the package test cannot run on this host (None: it can). A missing
    mmdebstrap is installed with apt-get first."""
    if os.geteuid() != 0:
        return "building and installing the Debian package needs root (chroot, mount)"
    for tool in ("chroot", "mount", "umount", "unshare", "nsenter", "ip", "tar"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed on this host"
    if bootstrap_tool() is None:
        env = {**APT_ENV}
        update = _run(["apt-get", "update", "-qq"], env=env, check=False, timeout=600)
        install = _run(
            ["apt-get", "install", "-y", "-qq", "mmdebstrap"],
            env=env,
            check=False,
            timeout=900,
        )
        if bootstrap_tool() is None:
            return (
                "neither mmdebstrap nor debootstrap is installed, and apt-get "
                f"could not install mmdebstrap: {update.stderr[-500:]}"
                f"{install.stderr[-1000:]}"
            )
    if not host_mirrors():
        return "no Debian mirror for bookworm in this host's apt sources"
    return None


def bootstrap_tool() -> str | None:
    for tool in ("mmdebstrap", "debootstrap"):
        if shutil.which(tool):
            return tool
    return None


def host_mirrors() -> list[str]:
    """``deb URI SUITE main`` lines for bookworm, read from the host's apt
    sources (deb822 ``.sources`` files and one-line ``.list`` files)."""
    lines: list[str] = []
    apt = Path("/etc/apt")
    files = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*"))]
    for path in files:
        if not path.is_file():
            continue
        text = path.read_text(errors="replace")
        if path.suffix == ".sources":
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line:
                        continue
                    key, _, value = line.partition(":")
                    fields[key.strip().lower()] = value.strip()
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                if "deb" not in fields.get("types", "").split():
                    continue
                for uri in fields.get("uris", "").split():
                    for suite in fields.get("suites", "").split():
                        lines.append(f"deb {uri} {suite} main")
        elif path.name == "sources.list" or path.suffix == ".list":
            for line in text.splitlines():
                words = line.split("#", 1)[0].split()
                if not words or words[0] != "deb":
                    continue
                words = [w for w in words[1:] if not w.startswith("[")]
                if len(words) >= 2:
                    lines.append(f"deb {words[0]} {words[1]} main")
    wanted = re.compile(rf"^deb (https?://\S+) {SUITE}(-updates|-security)? main$")
    seen: list[str] = []
    for line in lines:
        if wanted.match(line) and line not in seen:
            seen.append(line)
    return seen


def base_tarball() -> Path:
    """A minimal bookworm root (apt, ca-certificates, its package lists kept),
    made once and kept in .cache/debian."""
    mirrors = host_mirrors()
    key = hashlib.sha256("\n".join([SUITE, *mirrors]).encode()).hexdigest()[:12]
    tarball = CACHE / f"{SUITE}-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = tarball.with_suffix(".partial.tar")
    tool = bootstrap_tool()
    if tool == "mmdebstrap":
        _run(
            [
                "mmdebstrap",
                "--quiet",
                "--variant=apt",
                "--include=ca-certificates",
                "--skip=cleanup/apt/lists",
                SUITE,
                partial,
                *mirrors,
            ],
            timeout=1200,
        )
    else:  # debootstrap: a directory, packed here
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            root = Path(tmp) / "root"
            uri = mirrors[0].split()[1]
            _run(
                [
                    "debootstrap",
                    "--variant=minbase",
                    "--include=ca-certificates",
                    SUITE,
                    root,
                    uri,
                ],
                timeout=1200,
            )
            (root / "etc/apt/sources.list").write_text("\n".join(mirrors) + "\n")
            _run(["tar", "-C", root, "-cf", partial, "."], timeout=600)
    partial.rename(tarball)
    return tarball


# -- a root to run things in ----------------------------------------------------


class Chroot:
    """A fresh bookworm root from the cached tarball, with /proc mounted and
    the download caches shared; ``close`` unmounts everything, then deletes
    the root (never while something is still mounted in it)."""

    def __init__(self, name: str):
        CACHE.mkdir(parents=True, exist_ok=True)
        self.dir = Path(tempfile.mkdtemp(prefix=f"cozyd-{name}-", dir=CACHE))
        self.root = self.dir / "root"
        self.root.mkdir()
        self.mounts: list[Path] = []
        self.processes: list[subprocess.Popen] = []
        try:
            _run(["tar", "-C", self.root, "-xf", base_tarball()], timeout=600)
            shutil.copy("/etc/resolv.conf", self.root / "etc/resolv.conf")
            hosts = self.root / "etc/hosts"
            if not hosts.exists():  # as the installer writes it
                hosts.write_text(
                    "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
                )
            self._trust_host_authorities()
            self._mount(["-t", "proc", "proc"], "proc")
            self._mount(["--bind", "/dev/pts"], "dev/pts")  # apt's terminal log
            for cache, inside in (
                ("apt-archives", "var/cache/apt/archives"),
                ("wheels", WHEELS.lstrip("/")),
            ):
                (CACHE / cache).mkdir(parents=True, exist_ok=True)
                if cache == "apt-archives":
                    (CACHE / cache / "partial").mkdir(exist_ok=True)
                self._mount(["--bind", CACHE / cache], inside)
        except BaseException:
            self.close()
            raise

    def _trust_host_authorities(self) -> None:
        """The host's local certificate authorities (a TLS-inspecting egress
        proxy's, say) are trusted inside too, as on the host."""
        local = Path("/usr/local/share/ca-certificates")
        certificates = sorted(local.glob("*.crt")) if local.is_dir() else []
        if not certificates:
            return
        target = self.root / "usr/local/share/ca-certificates"
        target.mkdir(parents=True, exist_ok=True)
        for certificate in certificates:
            shutil.copy(certificate, target / certificate.name)
        self.run("update-ca-certificates", timeout=300)

    def _mount(self, args: list, inside: str) -> None:
        target = self.root / inside
        target.mkdir(parents=True, exist_ok=True)
        _run(["mount", *args, target], env=APT_ENV, timeout=60)
        self.mounts.append(target)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
                process.wait(30)
        for target in reversed(self.mounts):
            done = _run(["umount", target], check=False, timeout=60)
            if done.returncode != 0:
                _run(["umount", "-l", target], check=False, timeout=60)
        self.mounts = []
        with open("/proc/mounts") as f:
            still = [line.split()[1] for line in f if str(self.root) in line]
        if still:
            raise RuntimeError(f"still mounted, {self.dir} left in place: {still}")
        shutil.rmtree(self.dir, ignore_errors=True)

    def path(self, inside: str) -> Path:
        return self.root / inside.lstrip("/")

    def command(self, *args: str, user: str | None = None) -> list[str]:
        spec = []
        if user is not None:
            uid, gid = self.ids(user)
            spec = [f"--userspec={uid}:{gid}", "--groups="]
        return ["chroot", *spec, str(self.root), *args]

    def run(
        self,
        *args: str,
        env: dict[str, str] | None = None,
        check: bool = True,
        timeout: float = 900.0,
        netns_of: RunningDaemon | None = None,
        user: str | None = None,
    ) -> subprocess.CompletedProcess:
        command = self.command(*args, user=user)
        if netns_of is not None:
            command = ["nsenter", f"--net=/proc/{netns_of.process.pid}/ns/net", *command]
        return _run(command, env={**APT_ENV, **(env or {})}, check=check, timeout=timeout)

    def ids(self, user: str) -> tuple[int, int]:
        for line in self.path("/etc/passwd").read_text().splitlines():
            fields = line.split(":")
            if fields[0] == user:
                return int(fields[2]), int(fields[3])
        raise KeyError(f"no user {user} in {self.root}")

    def apt_get(self, *args: str, timeout: float = 1200.0) -> subprocess.CompletedProcess:
        return self.run(
            "apt-get", "-y", "-o", "APT::Sandbox::User=root", *args, timeout=timeout
        )

    def spawn_in_netns(
        self, args: Sequence[str], *, user: str | None, env: dict[str, str]
    ) -> RunningDaemon:
        """Start ``args`` in the root, in a new network namespace of its own
        (loopback only, so fixed ports never clash with the host's)."""
        inner = shlex.join(
            [
                "env",
                "-i",
                *(f"{k}={v}" for k, v in env.items()),
                *self.command(*args, user=user),
            ]
        )
        process = subprocess.Popen(
            ["unshare", "--net", "--", "sh", "-c", f"ip link set lo up && exec {inner}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            stdin=subprocess.DEVNULL,
            env=APT_ENV,
        )
        self.processes.append(process)
        return RunningDaemon(process)


class RunningDaemon:
    """A daemon's process and its output, read in a thread."""

    def __init__(self, process: subprocess.Popen):
        self.process = process
        self.lines: list[str] = []
        self.ports: dict[str, int] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)
            match = LISTENING.search(line)
            if match:
                self.ports[match.group(1)] = int(match.group(3))

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_listening(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.ports) < 2:
            if self.process.poll() is not None:
                self._reader.join(5)
                raise AssertionError(
                    f"cozyd exited {self.process.returncode}:\n" + self.output
                )
            if time.monotonic() > deadline:
                raise AssertionError("cozyd did not start in time:\n" + self.output)
            time.sleep(0.1)

    def stop(self, timeout: float = 60.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._reader.join(5)
        return self.process.returncode


# -- building -------------------------------------------------------------------


def source_files() -> list[str]:
    """The repository's files as git sees them (tracked, and new ones not
    ignored): what a fresh clone would hold, with the work in progress."""
    done = _run(
        ["git", "-C", REPO, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        env={**APT_ENV, "HOME": os.environ.get("HOME", "/root")},
    )
    return [
        name
        for name in done.stdout.split("\0")
        if name and os.path.lexists(os.path.join(REPO, name))
    ]


def copy_tree(files: Iterable[str], target: Path) -> None:
    for name in files:
        source = os.path.join(REPO, name)
        dest = target / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        if os.path.islink(source):
            os.symlink(os.readlink(source), dest)
        elif os.path.isfile(source):
            shutil.copy2(source, dest)


def bump_version(tree: Path, suffix: str) -> str:
    """A new top entry in ``debian/changelog`` (as ``dch`` would add):
    the same version plus ``suffix``. Returns the new version."""
    changelog = tree / "debian" / "changelog"
    text = changelog.read_text()
    first = text.splitlines()[0]
    match = re.match(r"(\S+) \(([^)]+)\) (\S+); (.*)", first)
    assert match, first
    source, version, dist, urgency = match.groups()
    new = f"{version}{suffix}"
    trailer = re.search(r"^ -- (.+?)  ", text, re.MULTILINE)
    assert trailer, "no trailer line in debian/changelog"
    stamp = time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime())
    entry = (
        f"{source} ({new}) {dist}; {urgency}\n\n"
        f"  * Rebuilt by the package test (an upgrade).\n\n"
        f" -- {trailer.group(1)}  {stamp}\n\n"
    )
    changelog.write_text(entry + text)
    return new


def build(chroot: Chroot, tree: str, *, fast_compression: bool = False) -> Path:
    """``dpkg-buildpackage -us -uc -b`` in ``tree`` (a path in the root);
    the built .deb (in the tree's parent directory). ``fast_compression``
    packs it with gzip -1 instead of xz (a third of the build's time), for
    packages that only the test installs."""
    # The wheels the lock files name, hash-checked, into the shared cache
    # (only what is missing is downloaded); the build then installs from
    # there, hash-checked again, without asking the index.
    chroot.run(
        "sh",
        "-c",
        "python3 -m venv /tmp/wheels-venv && /tmp/wheels-venv/bin/pip "
        "download --quiet --disable-pip-version-check --no-deps "
        f"--dest {WHEELS} -r {tree}/requirements.lock "
        f"-r {tree}/debian/build-requirements.lock",
        timeout=1200,
    )
    env = {"PIP_FIND_LINKS": WHEELS, "PIP_NO_INDEX": "1"}
    if fast_compression:
        env.update(DPKG_DEB_COMPRESSOR_TYPE="gzip", DPKG_DEB_COMPRESSOR_LEVEL="1")
    chroot.run(
        "sh",
        "-c",
        f"cd {shlex.quote(tree)} && dpkg-buildpackage -us -uc -b",
        env=env,
        timeout=1800,
    )
    parent = chroot.path(tree).parent
    version = chroot.run(
        "dpkg-parsechangelog", "-l", f"{tree}/debian/changelog", "-S", "Version"
    ).stdout.strip()
    debs = list(parent.glob(f"cozyd_{version}_*.deb"))
    assert len(debs) == 1, (version, sorted(p.name for p in parent.iterdir()))
    return debs[0]
