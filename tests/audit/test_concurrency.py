"""Concurrent writers: the chain head's lock keeps the chain gapless and unforked.

These tests commit for real (transactional), so pytest-django empties the database
after them. The module restores what the migrations wrote (role groups, the chain
head) afterwards, for the transactional tests that run later and expect it.
"""

from __future__ import annotations

import random
import threading
import time

import pytest
from django.db import OperationalError, connection, transaction

from audit.chain import verify_chain
from audit.models import AuditEvent
from audit.services import audit_record

# Transactional: the writers are real concurrent transactions. (The flush afterwards
# empties the chain head too; audit_record makes a new one on an empty table.)
pytestmark = pytest.mark.django_db(transaction=True)


WRITERS, EVENTS_EACH = 6, 5


def test_concurrent_writers_never_fork_or_gap_the_chain():
    """Writers in parallel transactions take turns on the chain head.

    PostgreSQL makes them wait on the row lock. SQLite lets one write at a time and
    refuses the others ("locked"): they retry, as a caller would see an error.
    """
    errors: list[BaseException] = []
    start = threading.Barrier(WRITERS)

    def writer(number: int) -> None:
        try:
            start.wait()
            for i in range(EVENTS_EACH):
                deadline = time.monotonic() + 30
                while True:
                    try:
                        with transaction.atomic():
                            audit_record(
                                action="access.grant.checked-out", details={"writer": number, "i": i}
                            )
                        break
                    except OperationalError as exc:
                        if (
                            connection.vendor != "sqlite"
                            or "locked" not in str(exc)
                            or time.monotonic() > deadline
                        ):
                            raise
                        time.sleep(random.uniform(0.001, 0.02))
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert not errors
    sequences = list(AuditEvent.objects.order_by("sequence").values_list("sequence", flat=True))
    assert sequences == list(range(1, WRITERS * EVENTS_EACH + 1))
    result = verify_chain()
    assert result.ok, result.reason
    assert result.checked == WRITERS * EVENTS_EACH
