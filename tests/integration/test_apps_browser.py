"""An installed app in headless Chromium: it reads its token from the page
and writes to /data with it; without a session its private route sends
the browser to the login page."""

from __future__ import annotations

import pytest

from tests.support import browser as B
from tests.support.apps import app_files, manifest, write_folder

pytestmark = pytest.mark.integration

PASSPHRASE = "correct horse battery staple 42"


@pytest.mark.skipif(B.chromium_missing() is not None, reason=str(B.chromium_missing()))
def test_an_app_reads_its_token_and_calls_data(make_daemon, tmp_path):
    daemon = make_daemon()
    domain = f"alice.localhost:{daemon.ports['public']}"
    base = f"http://{domain}"
    added = daemon.cozyctl("instances", "add", domain)
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip()
    source = write_folder(str(tmp_path / "notes"), app_files(manifest()))
    installed = daemon.cozyctl(
        "apps", "install", "notes", f"file://{source}", "--domain", domain
    )
    assert installed.returncode == 0, installed.stderr
    app = f"http://notes.{domain}/"

    with B.chromium(prefix="app") as driver:
        B.onboard(driver, base, token, PASSPHRASE)
        driver.get(app)
        B.wait_for(driver, lambda d: d.title.startswith(("data:", "error:")))
        B.shoot(driver, "app-called-data")
        assert driver.title == "data:201", driver.page_source
        answer = driver.find_element("tag name", "body").get_attribute("data-answer")
        assert '"ok":true' in answer.replace(" ", "")

    with B.chromium(prefix="stranger") as driver:
        driver.get(app + "?from=test")
        landed = B.wait_for_url(driver, f"{base}/auth/login")
        assert "redirect=" in landed
        B.shoot(driver, "app-needs-login")
        # Logging in comes back to the app, which then works.
        B.log_in(driver, base, PASSPHRASE, redirect=app, expect=app)
        B.wait_for(driver, lambda d: d.title.startswith(("data:", "error:")))
        assert driver.title == "data:201", driver.page_source
