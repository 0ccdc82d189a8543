"""The worker's rules that need no process: the reference's BeforeHook,
the error of a run, COZY_TIME_LIMIT, the work folder's copy."""

from __future__ import annotations

import io
import os
import signal
import tarfile

import pytest

from cozyd.konnectors import process
from cozyd.konnectors.worker import (
    KonnectorWorker,
    _clean_entry,
    copy_code,
    should_queue,
    time_limit_env,
)


@pytest.mark.parametrize(
    ("manual", "state", "queued"),
    [
        (False, None, True),
        (False, {"status": "done", "last_error": "LOGIN_FAILED"}, True),
        (False, {"status": "errored", "last_error": "LOGIN_FAILED"}, False),
        (False, {"status": "errored", "last_error": "LOGIN_FAILED.TOO_MANY"}, False),
        (False, {"status": "errored", "last_error": "USER_ACTION_NEEDED.OAUTH"}, False),
        (False, {"status": "errored", "last_error": "USER_ACTION_NEEDED.CGU_FORM"}, True),
        (False, {"status": "errored", "last_error": "VENDOR_DOWN"}, True),
        (True, {"status": "errored", "last_error": "LOGIN_FAILED"}, True),
    ],
)
def test_should_queue(manual, state, queued):
    assert should_queue(manual=manual, trigger_state=state) is queued


def test_time_limit():
    assert time_limit_env(300) == "305"
    assert time_limit_env(0.2) == "6"
    assert time_limit_env(0) == "305"


def outcome(**kw):
    base = {"exit_code": 0, "signal": None}
    base.update(kw)
    return process.Outcome(**base)


@pytest.mark.parametrize(
    ("result", "code", "retry"),
    [
        (outcome(), None, None),
        (outcome(exit_code=1), "exit status 1", True),
        (outcome(exit_code=None, signal=signal.SIGKILL), "signal: killed", True),
        (outcome(error="CHALLENGE_ASKED"), "CHALLENGE_ASKED", True),
        (outcome(error="e", critical="LOGIN_FAILED", exit_code=1), "LOGIN_FAILED", False),
        (
            outcome(critical="USER_ACTION_NEEDED.CGU_FORM"),
            "USER_ACTION_NEEDED.CGU_FORM",
            False,
        ),
        (outcome(critical="VENDOR_DOWN", no_retry=True), "VENDOR_DOWN", False),
        (
            outcome(timed_out=True, critical="VENDOR_DOWN"),
            "context deadline exceeded",
            True,
        ),
    ],
)
def test_error_of_a_run(result, code, retry):
    error = KonnectorWorker.error_of(result)
    assert (error and error.code, error and error.retry) == (code, retry)


def test_on_delete_account_stays_inside():
    assert _clean_entry("delete.js") == "delete.js"
    assert _clean_entry("../../etc/passwd") == "etc/passwd"
    assert _clean_entry("/abs/x.js") == "abs/x.js"
    assert _clean_entry(None) == ""


def test_copy_code(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "lib").mkdir(parents=True)
    dst.mkdir()
    for name in ("index.js", "README.md", "package.json", "LICENSE", "lib/a.js"):
        (src / name).write_text(name)
    (src / "lib" / "README.md").write_text("kept below the top")
    secret = tmp_path / "secret"
    secret.write_text("outside")
    os.symlink(secret, src / "link.js")
    os.symlink(tmp_path, src / "dirlink")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        data = b"from the archive"
        info = tarfile.TarInfo("packed/main.js")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
        evil = tarfile.TarInfo("../escaped.js")
        evil.size = 1
        archive.addfile(evil, io.BytesIO(b"x"))
    (src / "app.tar").write_bytes(buffer.getvalue())
    with pytest.raises(tarfile.OutsideDestinationError):
        copy_code(str(src), str(dst))
    assert not (tmp_path / "escaped.js").exists()

    # Without the bad member.
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo("packed/main.js")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    (src / "app.tar").write_bytes(buffer.getvalue())
    copy_code(str(src), str(dst))
    found = sorted(
        os.path.relpath(os.path.join(root, f), dst)
        for root, _, files in os.walk(dst)
        for f in files
    )
    assert found == ["index.js", "lib/README.md", "lib/a.js", "packed/main.js"]
    for name in found:
        assert oct(os.stat(dst / name).st_mode & 0o777) == "0o644"


def test_slugs_name_folders_safely():
    from cozyd.konnectors.worker import _is_slug

    for good in ("demo", "my-konnector", "orange_mobile", "1.2.3"):
        assert _is_slug(good)
    for bad in ("", "../x", "a/b", "..", ".hidden", None, 3, "a..b"):
        assert not _is_slug(bad)
