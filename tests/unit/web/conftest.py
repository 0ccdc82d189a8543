import pytest

from cozyd.testing import TEST_ADMIN_PASSPHRASE, MemoryClient, memory_stack

AUTH = ("admin", TEST_ADMIN_PASSPHRASE)
ADMIN = "http://127.0.0.1:6060"


@pytest.fixture
def stack(tmp_path):
    return memory_stack(str(tmp_path))


@pytest.fixture
def admin(stack):
    return MemoryClient(stack.admin)


@pytest.fixture
def public(stack):
    return MemoryClient(stack.public)


def create(admin, domain, **params):
    return admin.request("POST", f"{ADMIN}/instances", auth=AUTH,
                         params={"Domain": domain, **params})
