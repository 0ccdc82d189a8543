import pytest
from hypothesis import given
from hypothesis import strategies as st

from cozyd.instance.domain import InvalidDomain, normalize_host, validate_domain


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("alice.cozy.localhost:8080", "alice.cozy.localhost:8080"),
        ("  Alice.COZY.localhost:8080 ", "alice.cozy.localhost:8080"),
        ("xn--caf-dma.example", "café.example"),
        ("CAFÉ.example:443", "café.example:443"),
        ("localhost", "localhost"),
    ],
)
def test_valid_domains_are_normalised(raw, expected):
    assert validate_domain(raw) == expected


@pytest.mark.parametrize(
    "raw,rule",
    [
        ("", "must not be empty"),
        ("   ", "must not be empty"),
        ("a b.example", "must not contain ' '"),
        ("a/b.example", "must not contain '/'"),
        ("..", "host name"),
        (".", "host name"),
        (".alice.example", "host name"),
        ("alice..example", "host name"),
        ("alice\x00.example", "must not contain"),
        ("alice\n.example", "must not contain"),
        ("alice.example:0", "port"),
        ("alice.example:http", "port"),
        ("alice.example:80:80", "at most one ':'"),
        ("alice@example", "must not contain '@'"),
        ("-alice.example", "must not start or end with '-'"),
        ("a" * 64 + ".example", "at most 63"),
    ],
)
def test_invalid_domains_name_the_broken_rule(raw, rule):
    with pytest.raises(InvalidDomain) as info:
        validate_domain(raw)
    assert rule in info.value.detail
    assert info.value.status == 422


def test_host_header_normalisation():
    assert normalize_host("ALICE.Cozy.Localhost:8080") == "alice.cozy.localhost:8080"
    assert normalize_host("xn--caf-dma.example:8080") == "café.example:8080"
    assert normalize_host("alice.example.") == "alice.example"


@given(st.text(max_size=80))
def test_validation_never_crashes_and_is_idempotent(raw):
    try:
        domain = validate_domain(raw)
    except InvalidDomain:
        return
    assert validate_domain(domain) == domain
    assert normalize_host(domain) == domain
