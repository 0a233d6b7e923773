"""Times shown to people are in the site's TIME_ZONE, named by the zone of the value (CET in
winter, CEST in summer for Europe/Berlin), and how long a grant has left is said in words.
Pages, e-mails, the gateway's list of grants and the names the Django admin shows."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
from datetime import timedelta

import pytest
from django.core import mail
from django.urls import reverse
from django.utils import timezone

from access import notifications
from access.models import Grant
from gateway.ssh.connection import GatewayConnection
from identity.models import DirectorySyncRun
from tests.conftest import verified_client
from tests.recordings.test_services import make_grant

pytestmark = pytest.mark.django_db

WINTER_NOON_UTC = datetime.datetime(2031, 1, 15, 12, 0, tzinfo=datetime.UTC)  # 13:00 CET
SUMMER_NOON_UTC = datetime.datetime(2031, 7, 15, 12, 0, tzinfo=datetime.UTC)  # 14:00 CEST


@pytest.fixture
def berlin(settings):
    settings.TIME_ZONE = "Europe/Berlin"


def _ending(grant: Grant, at: datetime.datetime) -> Grant:
    Grant.objects.filter(pk=grant.pk).update(starts_at=at - timedelta(hours=1), ends_at=at)
    grant.refresh_from_db()
    return grant


def test_the_grant_and_request_pages_show_the_sites_time_zone(berlin, client, alice):
    grant = _ending(make_grant(alice), WINTER_NOON_UTC)
    verified_client(client, alice)
    page = client.get(reverse("access:grant", args=[grant.pk])).content.decode()
    assert "2031-01-15 13:00:00 CET" in page and "2031-01-15 12:00:00 CET" in page  # until, from
    assert "UTC" not in page
    request_page = client.get(grant.request.get_absolute_url()).content.decode()
    assert f"{timezone.localtime(grant.request.created_at):%Y-%m-%d %H:%M:%S %Z}" in request_page
    assert "UTC" not in request_page


def test_time_left_is_said_in_words_on_the_grant_and_my_access_pages(client, alice):
    grant = make_grant(alice)
    Grant.objects.filter(pk=grant.pk).update(ends_at=timezone.now() + timedelta(minutes=65, seconds=30))
    verified_client(client, alice)
    page = client.get(reverse("access:grant", args=[grant.pk])).content.decode()
    assert "(1 h 5 min left)" in page
    mine = client.get(reverse("access:mine")).content.decode()
    assert "<td>1 h 5 min</td>" in mine
    assert " s</td>" not in mine and " s left" not in page


def test_the_gateway_lists_grants_with_the_time_left_in_words(alice):
    grant = make_grant(alice)
    Grant.objects.filter(pk=grant.pk).update(ends_at=timezone.now() + timedelta(minutes=65, seconds=30))
    grant = Grant.objects.select_related("account__target").get(pk=grant.pk)
    # On a thread of its own: after a browser test, Playwright keeps an event loop running here.
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        text = pool.submit(asyncio.run, GatewayConnection._menu_text(None, [grant])).result()
    assert "1) pacs01-root on pacs01 (1 h 5 min left)" in text


def test_e_mails_give_times_in_the_sites_time_zone(berlin, alice, mailoutbox):
    grant = _ending(make_grant(alice), SUMMER_NOON_UTC)
    notifications.expiring(grant)
    grant.request.reason = "ris down"
    notifications.break_glass(grant)
    expiring = mailoutbox[0]
    assert "ends at 14:00 CEST" in expiring.subject
    assert "ends at 2031-07-15 14:00 CEST" in expiring.body
    assert all("UTC" not in m.subject + m.body for m in mail.outbox)


def test_names_in_the_admin_and_sync_messages_give_the_sites_time_zone(berlin, alice):
    grant = _ending(make_grant(alice), WINTER_NOON_UTC)
    assert str(grant).endswith("until 2031-01-15 13:00 CET")
    run = DirectorySyncRun(full=True, started_at=SUMMER_NOON_UTC, state="running")
    assert str(run) == "full directory sync at 2031-07-15 14:00:00 CEST (running)"


def test_a_second_directory_sync_is_told_when_the_running_one_began_in_local_time(berlin, settings):
    from identity.directory import DirectorySyncBusy, _run_start

    DirectorySyncRun.objects.create(
        full=True, started_at=timezone.now(), state=DirectorySyncRun.State.RUNNING
    )
    with pytest.raises(DirectorySyncBusy) as busy:
        _run_start(full=True, dry_run=False, trigger=DirectorySyncRun.Trigger.COMMAND)
    assert f"since {timezone.localtime():%Y-%m-%d %H:}" in str(busy.value)
    assert timezone.localtime().strftime("%Z") in str(busy.value) and "UTC" not in str(busy.value)
