import os
import stat

import pytest

from cozyd import adminpass
from cozyd.testing import sync


def test_hash_verify_and_file_mode(tmp_path):
    line = adminpass.hash_passphrase("s3cret", n=1024)
    assert line.startswith("scrypt$1024$8$1$")
    assert "s3cret" not in line
    assert adminpass.verify_passphrase("s3cret", line)
    assert not adminpass.verify_passphrase("s3cret ", line)
    path = str(tmp_path / "cozy-admin-passphrase")
    adminpass.write_hash_file(path, line)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert adminpass.read_hash_file(path) == line


@pytest.mark.parametrize(
    "line",
    [
        "",
        "scrypt$1$8$1$00$00",
        "bcrypt$x",
        "scrypt$1000$8$1$00$00",
        "scrypt$1024$8$1$zz$00",
        "scrypt$1024$8$1$00$",
    ],
)
def test_malformed_hash_lines_are_refused(line):
    with pytest.raises(adminpass.InvalidHashFile):
        adminpass.parse_hash(line)


def test_checker_caches_only_the_right_passphrase():
    hashed: list[bool] = []

    async def run_hashing(function):
        result = function()
        hashed.append(result)
        return result

    checker = adminpass.PassphraseChecker(
        adminpass.hash_passphrase("good", n=1024), run_hashing=run_hashing
    )
    assert not sync(checker.check("bad"))
    assert sync(checker.check("good"))
    assert hashed == [False, True]  # scrypt ran in the hashing runner
    assert sync(checker.check("good"))
    assert hashed == [False, True]  # remembered: no scrypt again
    assert not sync(checker.check("bad"))
    assert hashed == [False, True, False]


def test_checker_without_a_runner_checks_in_place():
    checker = adminpass.PassphraseChecker(adminpass.hash_passphrase("good", n=1024))
    assert sync(checker.check("good"))
    assert not sync(checker.check("bad"))
