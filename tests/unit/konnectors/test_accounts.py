"""Credentials of io.cozy.accounts encrypted at rest; the key pair of
``cozyctl config gen-keys``; the /data routes use them."""

from __future__ import annotations

import json
import os
import stat

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cozyd.cli.main import main as cozyctl
from cozyd.konnectors.accounts import BadCredentials, Vault, gen_keys, reads_in_clear


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("keys") / "cozy-credentials")
    enc, dec = gen_keys(base)
    return enc, dec


def test_gen_keys_files(keys):
    enc, dec = keys
    for path in (enc, dec):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o400
    with pytest.raises(FileExistsError):
        gen_keys(enc[: -len(".enc")])


def test_cozyctl_gen_keys(tmp_path, capsys):
    assert cozyctl(["config", "gen-keys", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert str(tmp_path / "cozy-credentials.enc") in printed
    assert (tmp_path / "cozy-credentials.dec").exists()
    assert cozyctl(["config", "gen-keys", str(tmp_path)]) == 1
    assert "already exists" in capsys.readouterr().err


def test_encrypt_then_decrypt_an_account(keys):
    vault = Vault.from_files(*keys)
    doc = {
        "_id": "a1",
        "account_type": "demo",
        "auth": {"login": "joe", "password": "pw-S3CR3T", "secret": {"k": [1]}, "other": 3},
        "data": {"auth": {"access_token": "tok-S3CR3T"}},
    }
    stored = vault.encrypt_account(doc)
    assert stored is not doc and doc["auth"]["password"] == "pw-S3CR3T"
    assert stored["auth"]["login"] == "joe" and stored["auth"]["other"] == 3
    assert set(stored["auth"]) == {
        "login",
        "credentials_encrypted",
        "secret_encrypted",
        "other",
    }
    assert set(stored["data"]["auth"]) == {"access_token_encrypted"}
    assert "S3CR3T" not in json.dumps(stored)
    assert vault.decrypt_account(stored) == doc
    # Encrypting what is already encrypted keeps it as it is.
    assert (
        vault.encrypt_account(stored)["auth"]["credentials_encrypted"]
        == stored["auth"]["credentials_encrypted"]
    )


def test_only_the_encryptor_key_cannot_decrypt(keys):
    enc, dec = keys
    writer = Vault.from_files(enc, "")
    assert writer.can_encrypt and not writer.can_decrypt
    sealed = writer.seal(b"secret")
    with pytest.raises(BadCredentials):
        writer.open(sealed)
    assert Vault.from_files(enc, dec).open(sealed) == b"secret"


def test_another_key_or_an_altered_value_does_not_open(keys, tmp_path):
    vault = Vault.from_files(*keys)
    other = Vault.from_files(*gen_keys(str(tmp_path / "other")))
    sealed = vault.seal(b"secret")
    with pytest.raises(BadCredentials):
        other.open(sealed)
    tampered = sealed[:-4] + ("AAAA" if sealed[-4:] != "AAAA" else "BBBB")
    with pytest.raises(BadCredentials):
        vault.open(tampered)
    with pytest.raises(BadCredentials):
        vault.open("not base64!")
    # A value it cannot open stays as it was.
    doc = {"auth": {"credentials_encrypted": other.seal_credentials("a", "b")}}
    assert vault.decrypt_account(doc) == doc


@given(login=st.text(), password=st.text())
def test_credentials_round_trip(keys, login, password):
    vault = Vault.from_files(*keys)
    assert vault.open_credentials(vault.seal_credentials(login, password)) == (
        login,
        password,
    )


def test_who_reads_in_clear():
    doc = {"account_type": "demo"}
    assert reads_in_clear("konnector", "demo", doc)
    assert not reads_in_clear("konnector", "other", doc)
    assert not reads_in_clear("app", "demo", doc)
    assert not reads_in_clear("cli", "", doc)
