"""Targets, accounts, policies, requests, approvals and grants.

The workflow: a requester asks for an account (AccessRequest), approvers decide
(Approval), enough approvals check a credential out of Vault (Grant), and the grant
ends by check-in, revocation or expiry, after which the credential is released
(lease revoked) or rotated (static passwords). No secret is ever stored here.
"""

from __future__ import annotations

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.urls import reverse
from django.utils import timezone

from access.ticket_patterns import ticket_pattern_matches, ticket_pattern_problem
from audit.timefmt import local_time

slug_validator = RegexValidator(
    r"^[a-z0-9][a-z0-9-]{0,62}$", "Use lower-case letters, digits and hyphens (e.g. pacs01-root)."
)
username_validator = RegexValidator(
    r"^[A-Za-z_][A-Za-z0-9_.-]{0,62}$", "A login name: letters, digits, '_', '.', '-' (no spaces)."
)


class InvalidTransition(Exception):
    """A state change that the workflow does not allow; the message says why."""


# Target kinds reached over SSH: they have a host key to pin, ssh-ca and static accounts.
SSH_TARGET_KINDS = ("pacs", "vna", "other")


class Target(models.Model):
    """A host pamsite gives access to: a PACS or VNA server, its database, a web console."""

    class Kind(models.TextChoices):
        PACS = "pacs", "PACS"
        VNA = "vna", "VNA"
        DATABASE = "database", "Database"
        WEB_CONSOLE = "web-console", "Web console"
        OTHER = "other", "Other"

    name = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    kind = models.CharField(max_length=20, choices=Kind.choices, default=Kind.PACS)
    host = models.CharField(max_length=255)
    port = models.PositiveIntegerField(
        default=22, validators=[MinValueValidator(1), MaxValueValidator(65535)]
    )
    description = models.TextField(blank=True)
    owner_group = models.ForeignKey(Group, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    tags = models.JSONField(
        default=list, blank=True, help_text='Labels used by policies, e.g. ["radiology"].'
    )
    # Pinned SSH host key ("ssh-ed25519 AAAA..."): set only when a pam-admin confirms
    # the fingerprint fetched from the host. Never learnt on first use.
    host_key = models.TextField(blank=True)
    host_key_fingerprint = models.CharField(max_length=100, blank=True)
    host_key_confirmed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    host_key_confirmed_at = models.DateTimeField(null=True, blank=True)
    # TCP ports on the target that gateway users may forward to (ssh -L), e.g. [5432, 104].
    # A database account's own port is always allowed for its grants.
    forward_ports = models.JSONField(
        default=list,
        blank=True,
        help_text="TCP ports grant holders may forward to through the gateway, e.g. [5432].",
    )

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def get_absolute_url(self) -> str:
        return reverse("access:target", args=[self.pk])

    @property
    def has_host_key(self) -> bool:
        """Whether pamsite reaches this target over SSH, so that it has a host key to pin."""
        return self.kind in SSH_TARGET_KINDS

    def account_kinds(self) -> tuple[str, ...]:
        """The account kinds a target of this kind can hold."""
        if self.kind == self.Kind.DATABASE:
            return (Account.Kind.DATABASE,)
        if self.kind == self.Kind.WEB_CONSOLE:
            return (Account.Kind.STATIC,)
        return (Account.Kind.SSH_CA, Account.Kind.STATIC)

    def clean(self) -> None:
        ports = self.forward_ports or []
        if not isinstance(ports, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) and 1 <= p <= 65535 for p in ports
        ):
            raise ValidationError(
                {"forward_ports": "A list of TCP port numbers (1-65535), e.g. [5432, 104]."}
            )


class SslMode(models.TextChoices):
    """libpq's sslmode values, strictest first."""

    VERIFY_FULL = "verify-full", "verify-full (TLS, certificate and host name checked)"
    VERIFY_CA = "verify-ca", "verify-ca (TLS, certificate checked)"
    REQUIRE = "require", "require (TLS, certificate not checked)"
    PREFER = "prefer", "prefer (TLS if the server offers it)"
    DISABLE = "disable", "disable (no TLS)"


class Account(models.Model):
    """A privileged account on a target, whose credential lives in Vault."""

    class Kind(models.TextChoices):
        SSH_CA = "ssh-ca", "SSH certificate (Vault SSH CA)"
        DATABASE = "database", "Database (dynamic role)"
        STATIC = "static", "Static password (rotated)"

    target = models.ForeignKey(Target, on_delete=models.PROTECT, related_name="accounts")
    slug = models.CharField(max_length=63, unique=True, validators=[slug_validator])
    kind = models.CharField(max_length=10, choices=Kind.choices)
    username = models.CharField(
        max_length=63,
        validators=[username_validator],
        help_text="SSH principal or login; for database accounts, the role the dynamic user is granted.",
    )
    vault_role = models.CharField(max_length=100, blank=True, help_text="Vault role; default: the slug.")
    kv_path = models.CharField(max_length=200, blank=True, help_text="KV path; default: accounts/<slug>.")
    database_name = models.CharField(max_length=63, blank=True)
    # How a database account's Test connection (and a client through the gateway's port
    # forward) speaks TLS to the target's PostgreSQL: libpq's sslmode.
    database_sslmode = models.CharField(
        max_length=12, choices=SslMode.choices, default=SslMode.PREFER, blank=True
    )
    tags = models.JSONField(default=list, blank=True)
    description = models.TextField(blank=True)
    # Changed only through access.services.account_deactivate / account_reactivate (the
    # Django admin's box too): deactivating revokes the account's live grants.
    is_active = models.BooleanField(default=True)
    # The last "Test connection" (access.targets.account_test_connection): when, whether
    # the login worked, and what failed in words. Never a secret.
    last_test_at = models.DateTimeField(null=True, blank=True)
    last_test_ok = models.BooleanField(null=True, blank=True)
    last_test_message = models.TextField(blank=True)
    # Set when break-glass sent someone to the account's sealed emergency credential because
    # Vault was down: that password is no longer a secret. The worker rotates a static
    # account's password as soon as Vault is back and clears this; for other kinds a pam-admin
    # changes the emergency password on the target and clears it here.
    emergency_rotation_due_since = models.DateTimeField(
        null=True,
        blank=True,
        help_text="The sealed emergency credential was handed out (Vault down): change it, then clear this.",
    )

    class Meta:
        ordering = ["slug"]

    def __str__(self) -> str:
        return self.slug

    def get_absolute_url(self) -> str:
        return reverse("access:request_new") + f"?account={self.slug}"

    @property
    def revealable(self) -> bool:
        return self.kind in (self.Kind.DATABASE, self.Kind.STATIC)

    def all_tags(self) -> set[str]:
        return set(self.tags or []) | set(self.target.tags or [])


class AccessPolicy(models.Model):
    """Who may request which accounts, and on what terms.

    A policy applies to an account when it names the account, its target, or one of
    their tags; it lets members of its groups request it.
    """

    name = models.CharField(max_length=100, unique=True)
    groups = models.ManyToManyField(Group, related_name="access_policies")
    accounts = models.ManyToManyField(Account, blank=True, related_name="policies")
    targets = models.ManyToManyField(Target, blank=True, related_name="policies")
    tags = models.JSONField(default=list, blank=True)
    approvals_required = models.PositiveSmallIntegerField(
        default=1, validators=[MaxValueValidator(3)], help_text="Distinct approvers needed (0 to 3)."
    )
    max_duration_minutes = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(5), MaxValueValidator(7 * 24 * 60)]
    )
    ticket_required = models.BooleanField(default=True)
    ticket_pattern = models.CharField(
        max_length=200, blank=True, default=r"^(INC|CHG|RITM)-?\d{3,10}$", help_text="Regular expression."
    )
    # Shown on the request form before anyone gets it wrong ("Ticket, like INC-12345").
    ticket_example = models.CharField(
        max_length=64, blank=True, help_text="A ticket reference the pattern accepts, e.g. INC-12345."
    )
    ticket_case_insensitive = models.BooleanField(
        default=False, help_text="Accept the ticket in any case (inc-123 as INC-123)."
    )
    allow_reveal = models.BooleanField(
        default=False,
        help_text="The requester may see a database/static secret once (consoles that cannot be proxied).",
    )
    is_active = models.BooleanField(default=True)

    class Meta:
        verbose_name_plural = "access policies"
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        problem = ticket_pattern_problem(self.ticket_pattern) if self.ticket_pattern else None
        if problem:
            raise ValidationError({"ticket_pattern": problem})
        if (
            self.ticket_example
            and self.ticket_pattern
            and not ticket_pattern_matches(
                self.ticket_pattern, self.ticket_example, ignore_case=self.ticket_case_insensitive
            )
        ):
            raise ValidationError(
                {
                    "ticket_example": f"The example {self.ticket_example!r} does not match the pattern "
                    f"{self.ticket_pattern}: requesters would copy it and be refused. Give one it accepts."
                }
            )

    @property
    def ticket_rule(self) -> str:
        """The ticket rule in words, for the request form ("Ticket required, like INC-12345")."""
        if not self.ticket_required and not self.ticket_pattern:
            return "No ticket needed."
        text = "Ticket required" if self.ticket_required else "Ticket optional"
        if self.ticket_example:
            text += f", like {self.ticket_example}"
        elif self.ticket_pattern:
            text += f", matching {self.ticket_pattern}"
        if self.ticket_pattern and self.ticket_case_insensitive:
            text += " (any case)"
        return text + "."

    def applies_to(self, account: Account) -> bool:
        """Names the account, its target, or a shared tag (uses prefetched relations)."""
        if any(a.pk == account.pk for a in self.accounts.all()):
            return True
        if any(t.pk == account.target_id for t in self.targets.all()):
            return True
        return bool(set(self.tags or []) & account.all_tags())


class AccessRequest(models.Model):
    """A requester's ask for an account, for a reason, a ticket and a duration."""

    class State(models.TextChoices):
        PENDING = "pending", "Waiting for approval"
        APPROVED = "approved", "Approved, credential not yet checked out"
        FULFILLED = "fulfilled", "Granted"
        DENIED = "denied", "Denied"
        CANCELLED = "cancelled", "Cancelled"
        EXPIRED = "expired", "Expired without a decision"

    TRANSITIONS = {
        State.PENDING: {State.APPROVED, State.DENIED, State.CANCELLED, State.EXPIRED},
        State.APPROVED: {State.FULFILLED, State.CANCELLED, State.EXPIRED},
    }

    requester = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="access_requests"
    )
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="requests")
    policy = models.ForeignKey(AccessPolicy, null=True, on_delete=models.PROTECT, related_name="requests")
    reason = models.TextField()
    ticket = models.CharField(max_length=64, blank=True)
    duration_minutes = models.PositiveIntegerField()
    approvals_required = models.PositiveSmallIntegerField()
    break_glass = models.BooleanField(default=False)
    state = models.CharField(max_length=10, choices=State.choices, default=State.PENDING)
    created_at = models.DateTimeField(default=timezone.now)
    decided_at = models.DateTimeField(null=True, blank=True)
    checkout_error = models.TextField(blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [
            models.Index(fields=["state", "created_at"]),
            models.Index(fields=["requester", "-created_at"]),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.account} for {self.requester}"

    def get_absolute_url(self) -> str:
        return reverse("access:request", args=[self.pk])

    def transition_to(self, new_state: str) -> None:
        """Change state if the workflow allows it; raise InvalidTransition otherwise."""
        if new_state not in self.TRANSITIONS.get(self.state, set()):
            raise InvalidTransition(
                f"This request is {self.get_state_display().lower()}; it cannot become "
                f"{self.State(new_state).label.lower()}."
            )
        self.state = new_state


class Approval(models.Model):
    """One approver's decision on a request (each approver counts once)."""

    class Decision(models.TextChoices):
        APPROVE = "approve", "Approved"
        DENY = "deny", "Denied"

    request = models.ForeignKey(AccessRequest, on_delete=models.PROTECT, related_name="approvals")
    approver = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    decision = models.CharField(max_length=10, choices=Decision.choices)
    comment = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(fields=["request", "approver"], name="one_decision_per_approver")
        ]

    def __str__(self) -> str:
        return f"{self.approver} {self.decision} #{self.request_id}"


class Grant(models.Model):
    """A checked-out credential: live from start to end, then released or rotated."""

    class State(models.TextChoices):
        ACTIVE = "active", "Active"
        CHECKED_IN = "checked-in", "Checked in"
        REVOKED = "revoked", "Revoked"
        EXPIRED = "expired", "Expired"

    class Cleanup(models.TextChoices):
        NONE = "none", "Nothing to do yet"
        PENDING = "pending", "Release or rotation pending"
        DONE = "done", "Released / rotated"
        FAILED = "failed", "Release or rotation failing: retried"

    class Credential(models.TextChoices):
        VAULT = "vault", "Checked out of Vault"
        # Break-glass while Vault was unreachable or sealed: the holder was told to use the
        # account's emergency password that the hospital keeps offline (e.g. in a safe).
        SEALED_ENVELOPE = "sealed-envelope", "Sealed emergency credential (Vault was unreachable)"

    TRANSITIONS = {State.ACTIVE: {State.CHECKED_IN, State.REVOKED, State.EXPIRED}}

    request = models.OneToOneField(AccessRequest, on_delete=models.PROTECT, related_name="grant")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="grants")
    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="grants")
    state = models.CharField(max_length=12, choices=State.choices, default=State.ACTIVE)
    starts_at = models.DateTimeField(default=timezone.now)
    ends_at = models.DateTimeField()
    ended_at = models.DateTimeField(null=True, blank=True)
    ended_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    end_reason = models.TextField(blank=True)
    # What Vault handed out, minus any secret: the lease to revoke and the login name.
    lease_id = models.CharField(max_length=255, blank=True)
    login = models.CharField(max_length=128, blank=True)
    credential = models.CharField(max_length=16, choices=Credential.choices, default=Credential.VAULT)
    break_glass = models.BooleanField(default=False)
    reviewed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    reviewed_at = models.DateTimeField(null=True, blank=True)
    review_comment = models.TextField(blank=True)
    revealed_at = models.DateTimeField(null=True, blank=True)
    expiry_warned_at = models.DateTimeField(null=True, blank=True)
    cleanup = models.CharField(max_length=10, choices=Cleanup.choices, default=Cleanup.NONE)
    cleanup_attempts = models.PositiveIntegerField(default=0)
    cleanup_error = models.TextField(blank=True)
    cleanup_next_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-starts_at"]
        indexes = [
            models.Index(fields=["state", "ends_at"]),
            models.Index(fields=["cleanup", "cleanup_next_at"]),
            models.Index(fields=["user", "state"]),
        ]

    def __str__(self) -> str:
        return f"{self.account} for {self.user} until {local_time(self.ends_at)}"

    def get_absolute_url(self) -> str:
        return reverse("access:grant", args=[self.pk])

    @property
    def is_live(self) -> bool:
        return self.state == self.State.ACTIVE and self.ends_at > timezone.now()

    @property
    def seconds_left(self) -> int:
        return max(0, int((self.ends_at - timezone.now()).total_seconds())) if self.is_live else 0

    def transition_to(self, new_state: str) -> None:
        if new_state not in self.TRANSITIONS.get(self.state, set()):
            raise InvalidTransition(
                f"This grant is {self.get_state_display().lower()}; it cannot become "
                f"{self.State(new_state).label.lower()}."
            )
        self.state = new_state
