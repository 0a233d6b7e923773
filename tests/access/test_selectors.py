"""Which policy applies to whom: by account, target or tag; the strictest wins."""

import pytest
from django.contrib.auth.models import Group

from access.models import AccessPolicy, Account, Target
from access.selectors import policy_for, requestable_accounts_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def radiology(db):
    vna = Target.objects.create(name="vna01", kind=Target.Kind.VNA, host="10.0.0.5", tags=["radiology"])
    return Account.objects.create(target=vna, slug="vna01-admin", kind=Account.Kind.STATIC, username="admin")


def _policy(name, *, approvals=1, minutes=60, **links):
    policy = AccessPolicy.objects.create(
        name=name, approvals_required=approvals, max_duration_minutes=minutes, **links
    )
    policy.groups.add(Group.objects.get(name="requester"))
    return policy


def test_a_policy_by_tag_covers_the_targets_accounts(alice, radiology):
    assert policy_for(user=alice, account=radiology) is None
    policy = _policy("radiology", tags=["radiology"])
    assert policy_for(user=alice, account=radiology) == policy
    assert [a for a, _ in requestable_accounts_for(user=alice)] == [radiology]


def test_the_strictest_policy_wins(alice, radiology):
    _policy("lenient", approvals=0, minutes=240, tags=["radiology"])
    strict = _policy("strict", approvals=2, minutes=30)
    strict.accounts.add(radiology)
    assert policy_for(user=alice, account=radiology) == strict


def test_inactive_accounts_and_policies_and_other_groups_do_not_count(alice, mallory, radiology):
    policy = _policy("radiology", tags=["radiology"])
    assert policy_for(user=mallory, account=radiology) is None  # not a requester
    policy.is_active = False
    policy.save()
    assert policy_for(user=alice, account=radiology) is None
    policy.is_active = True
    policy.save()
    radiology.is_active = False
    radiology.save()
    assert policy_for(user=alice, account=radiology) is None
