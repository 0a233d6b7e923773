"""Create the first pam-admin when there is none (used by `make run`)."""

import secrets

from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from audit.services import audit_record
from common.roles import Role
from identity.models import User


class Command(BaseCommand):
    help = (
        "Create a first local pam-admin (with every role) if no active pam-admin exists, "
        "and print its one-time password. Does nothing when one exists."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default="admin")

    @transaction.atomic
    def handle(self, *args, username: str, **options):
        if User.objects.filter(groups__name=Role.PAM_ADMIN, is_active=True).exists():
            self.stdout.write("A pam-admin already exists: sign in with that account.")
            return
        if User.objects.filter(username=username).exists():
            self.stderr.write(f"User {username!r} exists but is not an active pam-admin; nothing changed.")
            return
        password = secrets.token_urlsafe(12)
        user = User.objects.create_user(
            username=username, password=password, display_name="First administrator"
        )
        user.groups.set(Group.objects.filter(name__in=Role.values))
        audit_record(action="identity.first_admin_created", obj=user, details={"roles": sorted(Role.values)})
        self.stdout.write(
            self.style.SUCCESS(
                f"Created the first pam-admin.\n  username: {username}\n  password: {password}\n"
                "  (shown once: you will set up your authenticator app at first sign-in)"
            )
        )
