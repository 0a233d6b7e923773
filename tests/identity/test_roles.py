"""The four roles exist from the migrations and are read from group membership."""

import pytest
from django.contrib.auth.models import AnonymousUser, Group
from django.core.exceptions import PermissionDenied

from common.roles import Role, has_role, require_role, roles_of

pytestmark = pytest.mark.django_db


def test_migrations_create_the_four_role_groups():
    """The data migration is applied and makes the four groups (run again here: an earlier
    test of the run may have emptied the table, as a transactional test's flush does)."""
    import importlib

    from django.apps import apps
    from django.db import connection
    from django.db.migrations.recorder import MigrationRecorder

    applied = MigrationRecorder(connection).applied_migrations()
    assert ("identity", "0002_roles") in applied
    Group.objects.filter(name__in=Role.values).delete()
    importlib.import_module("identity.migrations.0002_roles").create_roles(apps, None)
    names = set(Group.objects.values_list("name", flat=True))
    assert {"requester", "approver", "auditor", "pam-admin"} <= names
    assert set(Role.values) == {"requester", "approver", "auditor", "pam-admin"}


def test_roles_come_from_groups(alice, carol):
    assert roles_of(alice) == {"requester"}
    assert has_role(carol, Role.AUDITOR)
    assert not has_role(alice, Role.AUDITOR, Role.PAM_ADMIN)


def test_require_role_refuses_who_lacks_it(alice, mallory):
    require_role(alice, Role.REQUESTER)
    with pytest.raises(PermissionDenied):
        require_role(mallory, Role.REQUESTER)


def test_deactivated_or_anonymous_users_hold_no_role(alice):
    assert roles_of(AnonymousUser()) == frozenset()
    alice.is_active = False
    assert roles_of(alice) == frozenset()
