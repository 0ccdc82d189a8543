"""The sandbox's command line, read from the configuration."""

from __future__ import annotations

import os

import pytest

from cozyd.config import ConfigError, load_config
from cozyd.konnectors import sandbox
from cozyd.testing import write_config
from tests.support.system_tools import ensure_command


@pytest.fixture(autouse=True)
def bwrap():
    # The command lines name bubblewrap's path: the tests need it installed
    # (installed here when missing, as the integration tests do).
    return ensure_command("bwrap", "bubblewrap")


def settings_of(tmp_path, **keys) -> sandbox.SandboxSettings:
    path = write_config(str(tmp_path), konnectors={k: v for k, v in keys.items()})
    return sandbox.SandboxSettings.from_config(load_config(path, env={}))


def pairs(argv: list[str], option: str) -> list[tuple[str, str]]:
    return [(argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a == option]


def test_defaults_from_the_shipped_file():
    here = os.path.dirname(os.path.abspath(__file__))
    shipped = os.path.join(here, "..", "..", "..", "etc", "cozyd.conf")
    config = load_config(shipped, env={"COZYD_ADMIN_SECRET_FILENAME": ""})
    settings = sandbox.SandboxSettings.from_config(config)
    assert settings.mode == "bwrap"
    assert settings.network is True
    assert settings.limits == sandbox.Limits()


def test_bad_values_are_all_reported(tmp_path):
    path = write_config(
        str(tmp_path),
        konnectors={"sandbox": "chroot", "memory": "lots", "network": "maybe"},
    )
    with pytest.raises(ConfigError) as caught:
        load_config(path, env={})
    text = str(caught.value)
    for key in ("sandbox", "memory", "network"):
        assert f"[konnectors] {key}" in text


def test_namespaces_limits_and_views(tmp_path):
    settings = settings_of(tmp_path, memory="512MiB", processes=10, cpu_time=7)
    argv = sandbox.command_line(settings, "/srv/work/konnector-x1")
    assert argv[0].endswith("setsid")
    assert any(a.endswith("prlimit") for a in argv)
    for limit in (
        f"--data={512 * 1024**2}",
        "--nproc=10",
        "--cpu=7",
        f"--fsize={1024**3}",
        "--nofile=128",
    ):
        assert limit in argv
    if os.geteuid() == 0:
        assert "--reuid=65534" in argv and "--clear-groups" in argv
    start = next(i for i, a in enumerate(argv) if a.endswith("bwrap"))
    bwrap = argv[start:]
    for flag in (
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--disable-userns",
    ):
        assert flag in bwrap
    assert "--share-net" in bwrap
    assert ("/srv/work/konnector-x1", sandbox.CODE_MOUNT) in pairs(bwrap, "--ro-bind")
    assert ("/usr", "/usr") in pairs(bwrap, "--ro-bind")
    assert "--bind" not in bwrap  # nothing of the host is writable
    assert bwrap[bwrap.index("--proc") + 1] == "/proc"
    size = bwrap.index("--size")
    assert bwrap[size + 1 : size + 4] == [str(256 * 1024**2), "--tmpfs", "/tmp"]
    assert bwrap[-2:] == [os.path.realpath(sandbox.runner(settings)[0]), sandbox.CODE_MOUNT]
    bound = {src for src, _ in pairs(bwrap, "--ro-bind")}
    for hidden in settings.hidden:
        assert not any(hidden == b or hidden.startswith(b + "/") for b in bound) or (
            hidden in [bwrap[i + 1] for i, a in enumerate(bwrap) if a == "--tmpfs"]
        )


def test_network_off_and_a_file_to_run(tmp_path):
    settings = settings_of(tmp_path, network="false")
    argv = sandbox.command_line(settings, "/w/k", "delete.js")
    assert "--share-net" not in argv and "--unshare-all" in argv
    assert argv[-1] == sandbox.CODE_MOUNT + "/delete.js"


def test_hidden_paths_under_a_bound_tree_are_masked(tmp_path):
    settings = sandbox.SandboxSettings(hidden=("/usr/share",))
    argv = sandbox.bwrap_args(settings, "/w/k")
    masks = [argv[i + 1] for i, a in enumerate(argv) if a == "--tmpfs"]
    assert "/usr/share" in masks


def test_no_sandbox_and_a_wrapper(tmp_path):
    settings = settings_of(tmp_path, sandbox="none", wrapper="nice -n 5")
    argv = sandbox.command_line(settings, "/w/k")
    assert argv[:3] == ["nice", "-n", "5"]
    assert not any(a.endswith("bwrap") for a in argv)
    assert argv[-1] == "/w/k"
    assert "--nproc=512" in argv  # the limits still hold


def test_the_command_of_the_reference(tmp_path):
    settings = settings_of(tmp_path, cmd="/bin/sh -e")
    argv = sandbox.command_line(settings, "/w/k")
    assert argv[-3:] == ["/bin/sh", "-e", sandbox.CODE_MOUNT]


def test_missing_tools_are_named(tmp_path):
    settings = settings_of(tmp_path, cmd="no-such-node-anywhere")
    with pytest.raises(
        sandbox.SandboxUnavailable, match="no-such-node-anywhere is not installed"
    ):
        sandbox.command_line(settings, "/w/k")
