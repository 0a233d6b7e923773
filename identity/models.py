"""Users of pamsite."""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import AbstractUser
from django.db import models
from django.utils import timezone

from audit.timefmt import local_time
from common.roles import BREAK_GLASS_GROUP, Role


class User(AbstractUser):
    """A person who uses pamsite: requester, approver, auditor or pam-admin (or several).

    Local users have a password here; directory users (source ``ldap``) are mirrored
    from LDAP / Active Directory and authenticate against it. Users are deactivated,
    never deleted, so the audit trail and recordings keep their actor.
    """

    class Source(models.TextChoices):
        LOCAL = "local", "Local"
        LDAP = "ldap", "Directory (LDAP)"

    display_name = models.CharField(max_length=200, blank=True)
    source = models.CharField(max_length=10, choices=Source.choices, default=Source.LOCAL)
    # The directory's stable identifier (entryUUID / objectGUID): a rename is an update.
    external_id = models.CharField(max_length=200, null=True, blank=True, unique=True)
    # Where the directory keeps the user now (changes with an OU move); blank for local users.
    directory_dn = models.CharField("directory DN", max_length=1000, blank=True)
    # Why the user was deactivated, as the user and the pam-admins read it: the directory
    # sync's own words ("left the directory", "disabled in the directory"), or "by pat: <the
    # pam-admin's reason>"; blank for an active user (or one deactivated by a raw database
    # change). Only users the sync deactivated (its exact words) are reactivated by it when
    # they come back: a pam-admin's reason always starts with "by ", so it never matches.
    deactivated_reason = models.CharField(max_length=700, blank=True)
    deactivated_at = models.DateTimeField(null=True, blank=True)
    deactivated_by = models.ForeignKey(
        "self", null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # Set for an invited (or reset) local user until they choose their own password: every
    # page but that one sends them there (pamsite.middleware).
    must_change_password = models.BooleanField(default=False)

    class Meta:
        ordering = ["username"]

    def __str__(self) -> str:
        return self.display_name or self.get_full_name() or self.username

    @property
    def is_directory_user(self) -> bool:
        return self.source == self.Source.LDAP


class SSHPublicKey(models.Model):
    """A public key a user registered on her account page to log in to the SSH gateway.

    The key is the first factor there (a TOTP code always follows). A key belongs to
    one person: its data is unique across all users. Only the public part is stored;
    the fingerprint is kept as ``ssh-keygen -l`` prints it, for the page and the audit
    trail, which never hold the key itself.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ssh_keys")
    name = models.CharField(max_length=100, help_text="The user's label, e.g. “work laptop”.")
    key_type = models.CharField(max_length=50)  # "ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"
    # Base64 of the key data, canonical (as decoded then re-encoded): at most about
    # 1.4 kB for the largest accepted key (RSA 8192), so it fits a unique index.
    key_base64 = models.CharField(max_length=2000, unique=True)
    fingerprint = models.CharField(max_length=60)  # "SHA256:…", as ssh-keygen -l prints it
    created_at = models.DateTimeField(default=timezone.now)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at", "pk"]
        verbose_name = "SSH public key"
        constraints = [
            models.UniqueConstraint(fields=["user", "name"], name="identity_sshkey_unique_name_per_user"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.fingerprint})"


class DirectorySyncRun(models.Model):
    """One run of the directory sync (``manage.py sync_ldap`` or the worker): when, how
    long, what it changed, why it failed.

    A successful run that was not a dry run keeps the directory's newest modification
    time it saw (``high_water_mark``): the next incremental run asks only for users
    changed since. At most one run is ``running`` at a time (a unique constraint).
    """

    class State(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"

    class Trigger(models.TextChoices):
        COMMAND = "command", "manage.py sync_ldap"
        SCHEDULE = "schedule", "Schedule (worker)"

    state = models.CharField(max_length=10, choices=State.choices, default=State.RUNNING)
    trigger = models.CharField(max_length=10, choices=Trigger.choices, default=Trigger.COMMAND)
    full = models.BooleanField(help_text="Every user read (finds deleted users); else only changed ones.")
    dry_run = models.BooleanField(default=False)
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)
    server = models.CharField(max_length=255, blank=True, help_text="The directory server that answered.")
    seen = models.PositiveIntegerField(default=0, help_text="Users read from the directory.")
    created = models.PositiveIntegerField(default=0)
    updated = models.PositiveIntegerField(
        default=0, help_text="Users whose name, e-mail, DN or roles changed."
    )
    deactivated = models.PositiveIntegerField(default=0)
    reactivated = models.PositiveIntegerField(default=0)
    skipped = models.PositiveIntegerField(default=0, help_text="Directory users left alone (see problems).")
    # Why the run failed (directory unreachable, safety limit); blank when it succeeded.
    error = models.TextField(blank=True)
    # Entries that could not be applied and mapped groups not found (the run still succeeds).
    problems = models.JSONField(default=list, blank=True)
    # What the run changed (or, for a dry run or a refused run, would have): the first 1,000.
    changes = models.JSONField(default=list, blank=True)
    high_water_mark = models.CharField(max_length=40, blank=True)

    class Meta:
        ordering = ["-started_at", "-pk"]
        constraints = [
            models.UniqueConstraint(
                fields=["state"], condition=models.Q(state="running"), name="identity_one_sync_running"
            ),
        ]
        indexes = [models.Index(fields=["state", "dry_run", "-started_at"], name="identity_syncrun_last")]

    def __str__(self) -> str:
        kind = "full" if self.full else "incremental"
        started = local_time(self.started_at, "%Y-%m-%d %H:%M:%S %Z")
        return f"{kind} directory sync at {started} ({self.state})"

    @property
    def duration_seconds(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.started_at).total_seconds()


class LdapGroupMapping(models.Model):
    """A directory group whose members hold a pamsite role (pam-admins edit these).

    Once there is one row, these rows are the whole mapping and LDAP_GROUP_ROLE_MAP is
    no longer read; the first edit on the Directory page copies that setting's pairs in.
    """

    ROLE_CHOICES = [*((role.value, role.label) for role in Role), (BREAK_GLASS_GROUP, "Break-glass")]

    group_dn = models.CharField("group DN", max_length=1000)
    role = models.CharField(max_length=20, choices=ROLE_CHOICES)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["role", "group_dn"]
        verbose_name = "LDAP group mapping"
        constraints = [
            models.UniqueConstraint(fields=["group_dn", "role"], name="identity_ldapgroupmapping_unique"),
        ]

    def __str__(self) -> str:
        return f"{self.group_dn} → {self.role}"


class Invitation(models.Model):
    """A one-time way in for an invited local user (or one whose password a pam-admin reset).

    ``method`` is ``link``: a single-use link whose token is stored only as its SHA-256
    (``token_hash``), or ``password``: a one-time password (stored only as the user's
    password hash) that must be changed at the first sign-in. Either expires at
    ``expires_at`` (INVITATION_LIFETIME_HOURS after it was made). ``used_at`` is set when the
    user chose a password with it; ``revoked_at`` when a newer invitation, a deactivation or
    the user's own password replaced it. Neither the token nor the password is kept.
    """

    class Method(models.TextChoices):
        LINK = "link", "One-time link"
        PASSWORD = "password", "One-time password"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="invitations")
    method = models.CharField(max_length=10, choices=Method.choices)
    # sha256 hex of the link's token; null for a one-time password.
    token_hash = models.CharField(max_length=64, null=True, blank=True, unique=True)
    created_at = models.DateTimeField(default=timezone.now)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    expires_at = models.DateTimeField()
    used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    # The new user's own first invitation, or a password reset of an existing user.
    is_reset = models.BooleanField(default=False)

    class Meta:
        ordering = ["-created_at", "-pk"]
        indexes = [models.Index(fields=["user", "used_at", "revoked_at"], name="identity_invitation_open")]

    def __str__(self) -> str:
        return f"{self.get_method_display()} for {self.user} (until {self.expires_at:%Y-%m-%d %H:%M})"

    @property
    def is_open(self) -> bool:
        """Not used, not revoked (it may still have expired)."""
        return self.used_at is None and self.revoked_at is None

    def has_expired(self, now=None) -> bool:
        return (now or timezone.now()) >= self.expires_at


class LoginFailure(models.Model):
    """One sign-in failure that counts towards a lockout (identity.lockout).

    A wrong password, a wrong or replayed code, a connection that offered only strangers'
    keys: on the web or at the gateway. Attempts refused because the username or address
    was already locked, or because the authenticator was throttled, are never rows here.
    ``username`` is as typed, lower-cased (the directory matches it so), whether or not
    such a user exists. Rows of a username are deleted by its next complete sign-in
    (password and code); rows older than LOGIN_LOCKOUT_MINUTES no longer count and are
    purged. No password or code is ever kept.
    """

    username = models.CharField(max_length=150)
    # As common.net.client_ip gives it ("" if unknown or LOGIN_LOCKOUT_BY_IP is off); text, not
    # inet, so that it compares with LoginLock.value.
    address = models.CharField(max_length=45, blank=True, default="")
    channel = models.CharField(max_length=10, default="web")  # "web" or "ssh"
    at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["at", "pk"]
        indexes = [
            models.Index(fields=["username", "at"], name="identity_loginfail_user"),
            models.Index(fields=["address", "at"], name="identity_loginfail_addr"),
            models.Index(fields=["at"], name="identity_loginfail_at"),
        ]

    def __str__(self) -> str:
        where = self.address or "an unknown address"
        return f"failed sign-in as {self.username} from {where} at {self.at:%H:%M:%S}"


class LoginLock(models.Model):
    """The lockout state of one username or one client address (identity.lockout).

    One row per username or address that has had a counted failure: counting a failure
    locks this row first (SELECT ... FOR UPDATE), so concurrent failures from several web
    and gateway processes are counted one after the other and lock exactly at the limit.
    Locked while ``locked_until`` is in the future; ``failures`` (and, for an address,
    ``usernames``) say what was counted when it locked. Failures before ``counted_since``
    (the last lock or release) never count again. ``released_by`` is the pam-admin who
    unlocked it early, if one did.
    """

    class Scope(models.TextChoices):
        USERNAME = "username", "Username"
        ADDRESS = "address", "Client address"

    scope = models.CharField(max_length=10, choices=Scope.choices)
    value = models.CharField(max_length=150)  # lower-cased username, or the address as text
    counted_since = models.DateTimeField(null=True, blank=True)
    locked_at = models.DateTimeField(null=True, blank=True)
    locked_until = models.DateTimeField(null=True, blank=True)
    failures = models.PositiveIntegerField(default=0)
    usernames = models.PositiveIntegerField(default=0)
    released_at = models.DateTimeField(null=True, blank=True)
    released_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        ordering = ["scope", "value"]
        constraints = [
            models.UniqueConstraint(fields=["scope", "value"], name="identity_loginlock_unique"),
        ]
        indexes = [models.Index(fields=["locked_until"], name="identity_loginlock_until")]

    def __str__(self) -> str:
        return f"{self.get_scope_display()} {self.value}"
