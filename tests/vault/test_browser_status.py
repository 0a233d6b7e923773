"""In Chromium: the System status page warns about a Vault in memory and lists the kept
signing keys, at 1024 px and on a 390 px phone (screenshots in test-artifacts/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.recordings.test_browser_replay import sign_in
from vault.signatures import transit_keys_keep

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

ARTIFACTS = Path(__file__).resolve().parent.parent.parent / "test-artifacts"


def shots(page, live_server, name: str) -> None:
    for width, height, suffix in ((1024, 900, ""), (390, 844, "-phone")):
        page.set_viewport_size({"width": width, "height": height})
        page.goto(f"{live_server.url}/status/")
        page.screenshot(path=str(ARTIFACTS / f"{name}{suffix}.png"), full_page=True)
        # The Vault, mounts and signing keys cards hold their tables, at both widths.
        for section in ("#vault-storage", "#mounts", "#signing-keys"):
            overflow = page.evaluate(
                "s => { const card = document.querySelector(s).closest('.card');"
                " return card.scrollWidth - card.clientWidth; }",
                section,
            )
            assert overflow <= 0, f"{section} of {name} at {width} px is {overflow} px too wide"


def test_the_status_page_warns_about_vault_in_memory(page, live_server, pat, approle_settings):
    ARTIFACTS.mkdir(exist_ok=True)
    transit_keys_keep()
    errors = sign_in(page, live_server, pat)

    shots(page, live_server, "status-in-memory")

    assert page.locator("#vault-in-memory").is_visible()
    assert "in memory" in page.inner_text("#vault-storage")
    assert page.locator("#signing-keys tbody tr").count() == 1
    assert page.locator("#mounts-missing").count() == 0
    assert not [e for e in errors if "404" not in e]  # (the browser's own /favicon.ico)


@pytest.mark.slow
def test_the_status_page_of_the_embedded_vault_on_raft(
    page, live_server, pat, settings, embedded_openbao, tmp_path
):
    from tests.fixtures.openbao import bootstrap_embedded

    ARTIFACTS.mkdir(exist_ok=True)
    bootstrap_embedded(settings, embedded_openbao(), tmp_path / "approle")
    errors = sign_in(page, live_server, pat)

    shots(page, live_server, "status")

    assert page.locator("#vault-in-memory").count() == 0
    assert "kept on disk" in page.inner_text("#vault-storage")
    assert page.locator("#signing-keys tbody tr").count() == 1
    assert not [e for e in errors if "404" not in e]  # (the browser's own /favicon.ico)
