import pytest

from cozyd.testing import TEST_ADMIN_PASSPHRASE, MemoryClient

AUTH = ("admin", TEST_ADMIN_PASSPHRASE)
ADMIN = "http://127.0.0.1:6060"


@pytest.fixture
def admin(stack):
    return MemoryClient(stack.admin)


@pytest.fixture
def public(stack):
    return MemoryClient(stack.public)


def create(admin, domain, **params):
    return admin.request(
        "POST", f"{ADMIN}/instances", auth=AUTH, params={"Domain": domain, **params}
    )
