"""The directory sync: LDAP / Active Directory users mirrored into pamsite (joiner, mover, leaver).

``directory_sync(full=, dry_run=)`` reads the directory through identity/ldap_client.py
and then changes pamsite:

- joiners are created (source ``ldap``, ``external_id`` = the directory's stable id,
  an unusable local password, so only the directory's password logs them in);
- users are matched by that stable id, so a rename or an OU move is an update;
- roles follow the mapped groups (LdapGroupMapping rows, else LDAP_GROUP_ROLE_MAP). Only
  the role groups (requester, approver, auditor, pam-admin) and break-glass are managed;
  other Django groups and local users are never touched. A role whose mapped group is
  missing from the directory is not taken from anyone (a renamed group must not strip a
  whole department at once): the run reports it;
- leavers (gone from the directory: full runs only) and users disabled in the directory
  are deactivated, never deleted, by ``identity.users.user_deactivate`` with no acting
  user (the one deactivation service): their web sessions end; the gateway sees them
  inactive and cuts their live sessions; the access worker's sweep, run right after every
  sync, revokes their live grants (the credential is released) and cancels their open
  requests. A user the sync deactivated is reactivated
  if they come back; one a pam-admin deactivated stays so.

Every change is one audit event (``identity.directory.*``), plus one per run. Safety: a
run that would deactivate more than LDAP_SYNC_MAX_DEACTIVATE users, or more than
LDAP_SYNC_MAX_DEACTIVATE_PERCENT of the active directory users, changes nothing, is
recorded as failed and e-mails the pam-admins. The directory is read completely before
anything changes, so a directory that cannot be reached changes nothing either.

Incremental runs ask only for users modified since the last successful run's
high-water mark (the directory's own modifyTimestamp / whenChanged, so clocks do not
matter), and for Active Directory also for the accounts that expired since (accountExpires
passing changes nothing in the entry); group memberships are read in full on every run,
because adding someone to a group does not change the user's timestamp.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.hashers import is_password_usable, make_password
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.mail import send_mail
from django.db import DataError, IntegrityError, transaction
from django.http import HttpRequest
from django.utils import timezone

from audit.services import audit_record
from audit.timefmt import local_time
from common.roles import BREAK_GLASS_GROUP, Role, require_role
from identity.ldap_client import (
    DirectoryClient,
    DirectoryEntry,
    DirectoryError,
    LdapConfig,
    canonical_dn,
    generalized_time_key,
    get_config,
    normalise_dn,
)
from identity.models import DirectorySyncRun, LdapGroupMapping, User
from identity.users import DEACTIVATION_REASONS, DISABLED, LEFT, user_deactivate

logger = logging.getLogger(__name__)

MANAGED_GROUPS = frozenset([*Role.values, BREAK_GLASS_GROUP])
# Runs still "running" after this long were interrupted (the process died).
STALE_RUN = timedelta(hours=6)
BATCH = 200
CHANGES_KEPT = 1000


class DirectoryNotConfigured(Exception):
    """LDAP_SERVER_URI is empty: there is no directory to sync with."""


class DirectorySyncBusy(Exception):
    """Another sync is running."""


class DirectoryLoginRefused(Exception):
    """The directory accepted the password, but this person may not log in to pamsite."""


@dataclass
class Change:
    """One change a run made (or would make): ``action`` is the audit action's last part."""

    action: str  # created, updated, renamed, roles_changed, deactivated, reactivated
    username: str
    details: dict = field(default_factory=dict)

    def line(self) -> str:
        parts = []
        for name, value in self.details.items():
            if isinstance(value, dict) and {"from", "to"} <= value.keys():
                parts.append(f"{name}: {value['from']!r} → {value['to']!r}")
            elif isinstance(value, list):
                parts.append(f"{name}: {', '.join(map(str, value)) or '-'}")
            else:
                parts.append(f"{name}: {value}")
        return f"{self.action:<13} {self.username}" + (f"  ({'; '.join(parts)})" if parts else "")

    def as_json(self) -> dict:
        return {"action": self.action, "username": self.username, "details": self.details}


@dataclass
class SyncResult:
    """What a run did: its DirectorySyncRun row, the changes, and why it failed if it did."""

    run: DirectorySyncRun
    changes: list[Change] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    error: str = ""
    refused: bool = False  # the safety limit stopped it

    @property
    def ok(self) -> bool:
        return not self.error

    def count(self, action: str) -> int:
        return sum(1 for c in self.changes if c.action == action)

    def summary(self) -> str:
        run = self.run
        kind = "full" if run.full else "incremental"
        head = f"{'Dry run: ' if run.dry_run else ''}{kind} sync"
        if self.error:
            return f"{head} failed: {self.error}"
        return (
            f"{head}: {run.seen} directory users read, {run.created} created, {run.updated} updated, "
            f"{run.deactivated} deactivated, {run.reactivated} reactivated, {run.skipped} skipped"
            + (f", {len(self.problems)} problem(s)" if self.problems else "")
            + (f" ({run.server})" if run.server else "")
        )


# --- The group → role mapping ----------------------------------------------------------------


def group_role_map() -> list[tuple[str, str]]:
    """The mapping in force: pam-admins' rows if there are any, else LDAP_GROUP_ROLE_MAP."""
    rows = list(LdapGroupMapping.objects.order_by("pk").values_list("group_dn", "role"))
    return rows or list(getattr(settings, "LDAP_GROUP_ROLE_MAP", []))


def group_mapping_is_from_settings() -> bool:
    return not LdapGroupMapping.objects.exists()


def _mapping_event(action: str, *, mapping: LdapGroupMapping, acting_user, request, via: str = "") -> None:
    details = {"group_dn": mapping.group_dn, "role": mapping.role}
    if via:
        details["via"] = via
    audit_record(action=action, actor=acting_user, request=request, obj=mapping, details=details)


def _copy_settings_mapping(*, acting_user, request) -> None:
    """The first edit on the page starts from the mapping in force (the setting's pairs)."""
    if LdapGroupMapping.objects.exists():
        return
    for group_dn, role in getattr(settings, "LDAP_GROUP_ROLE_MAP", []):
        mapping = LdapGroupMapping.objects.create(
            group_dn=canonical_dn(group_dn), role=role, created_by=acting_user
        )
        _mapping_event(
            "identity.directory.mapping_added",
            mapping=mapping,
            acting_user=acting_user,
            request=request,
            via="copied from LDAP_GROUP_ROLE_MAP",
        )


@transaction.atomic
def group_mapping_add(
    *, acting_user: User, group_dn: str, role: str, request: HttpRequest | None = None
) -> LdapGroupMapping:
    """A pam-admin maps a directory group to a role (audited); ValidationError for a bad DN,
    an unknown role or a pair already mapped. The next sync applies it."""
    require_role(acting_user, Role.PAM_ADMIN)
    if role not in MANAGED_GROUPS:
        raise ValidationError({"role": f"{role!r} is not a role of pamsite."})
    try:
        dn = canonical_dn(group_dn)
    except DirectoryError as exc:
        raise ValidationError({"group_dn": str(exc)}) from None
    _copy_settings_mapping(acting_user=acting_user, request=request)
    wanted = normalise_dn(dn)
    for existing in LdapGroupMapping.objects.filter(role=role):
        if normalise_dn(existing.group_dn) == wanted:
            raise ValidationError({"group_dn": f"This group already gives the role {role}."})
    mapping = LdapGroupMapping.objects.create(group_dn=dn, role=role, created_by=acting_user)
    _mapping_event(
        "identity.directory.mapping_added", mapping=mapping, acting_user=acting_user, request=request
    )
    return mapping


@transaction.atomic
def group_mapping_remove(*, acting_user: User, mapping_pk: int, request: HttpRequest | None = None) -> None:
    """A pam-admin removes a group → role row (audited). The next sync takes the role from
    the group's members (unless another mapped group gives it)."""
    require_role(acting_user, Role.PAM_ADMIN)
    mapping = LdapGroupMapping.objects.select_for_update().filter(pk=mapping_pk).first()
    if mapping is None:
        raise ValidationError("This mapping no longer exists.")
    pk = mapping.pk
    mapping.delete()
    mapping.pk = pk
    _mapping_event(
        "identity.directory.mapping_removed", mapping=mapping, acting_user=acting_user, request=request
    )


# --- Reading the directory -------------------------------------------------------------------


@dataclass
class _Roles:
    """Which users each mapped group gives which role, and which roles cannot be judged."""

    members: dict[str, set[str]]  # normalised group DN -> stable ids
    mapping: list[tuple[str, str]]  # (normalised group DN, role), existing groups only
    uncertain: frozenset[str]  # roles with a mapped group not found: never removed
    problems: list[str]

    def desired(self, stable_id: str) -> set[str]:
        return {role for group, role in self.mapping if stable_id in self.members.get(group, ())}


def _read_roles(client: DirectoryClient, mapping: list[tuple[str, str]]) -> _Roles:
    normalised = [(normalise_dn(dn), role, dn) for dn, role in mapping]
    existing = client.existing_groups(dn for dn, _, _ in normalised)
    problems, uncertain = [], set()
    for group, role, original in normalised:
        if group not in existing:
            problems.append(
                f"Mapped group not found in the directory: {original} (role {role}); nobody's {role} "
                "role was removed because of it. Fix the mapping on the Directory page."
            )
            uncertain.add(role)
    members = {group: client.members_of(group) for group in existing}
    found = [(group, role) for group, role, _ in normalised if group in existing]
    return _Roles(members=members, mapping=found, uncertain=frozenset(uncertain), problems=problems)


@dataclass
class _Known:
    """A directory user as pamsite has it now."""

    pk: int
    username: str
    external_id: str
    email: str
    display_name: str
    first_name: str
    last_name: str
    directory_dn: str
    is_active: bool
    deactivated_reason: str
    password_usable: bool
    roles: set[str] = field(default_factory=set)


_KNOWN_FIELDS = (
    "pk",
    "username",
    "external_id",
    "email",
    "display_name",
    "first_name",
    "last_name",
    "directory_dn",
    "is_active",
    "deactivated_reason",
    "password",
)


def _known(row: tuple) -> _Known:
    values = dict(zip(_KNOWN_FIELDS, row, strict=True))
    password = values.pop("password")
    return _Known(**values, password_usable=is_password_usable(password))


def _known_users() -> dict[str, _Known]:
    """Every directory user of pamsite by stable id, with the managed roles they hold."""
    known = {
        row[2]: _known(row)
        for row in User.objects.filter(source=User.Source.LDAP).values_list(*_KNOWN_FIELDS)
    }
    by_pk = {k.pk: k for k in known.values()}
    memberships = User.groups.through.objects.filter(
        user__source=User.Source.LDAP, group__name__in=MANAGED_GROUPS
    ).values_list("user_id", "group__name")
    for user_id, name in memberships:
        if user_id in by_pk:
            by_pk[user_id].roles.add(name)
    return known


# --- Planning --------------------------------------------------------------------------------

_ENTRY_FIELDS = ("email", "display_name", "first_name", "last_name")


@dataclass
class _Op:
    """What one user needs: created, updated, renamed, roles, deactivated or reactivated."""

    username: str
    entry: DirectoryEntry | None = None
    known: _Known | None = None
    create: bool = False
    fields: dict[str, dict] = field(default_factory=dict)  # name -> {"from", "to"}
    rename: tuple[str, str] | None = None
    add_roles: set[str] = field(default_factory=set)
    remove_roles: set[str] = field(default_factory=set)
    unusable_password: bool = False
    deactivate: str = ""
    reactivate: bool = False

    def changes(self) -> list[Change]:
        out = []
        roles = sorted(self.add_roles)
        if self.create:
            details = {"dn": self.entry.dn, "roles": roles}
            if self.entry.email:
                details["email"] = self.entry.email
            return [Change("created", self.username, details)]
        if self.rename:
            out.append(
                Change("renamed", self.username, {"username": {"from": self.rename[0], "to": self.rename[1]}})
            )
        if self.fields or self.unusable_password:
            details = dict(self.fields)
            if self.unusable_password:
                details["local_login"] = "removed (directory users log in with the directory's password)"
            out.append(Change("updated", self.username, details))
        if self.reactivate:
            out.append(Change("reactivated", self.username, {}))
        if self.add_roles or self.remove_roles:
            out.append(
                Change("roles_changed", self.username, {"added": roles, "removed": sorted(self.remove_roles)})
            )
        if self.deactivate:
            out.append(Change("deactivated", self.username, {"reason": self.deactivate}))
        return out


def _role_diff(current: set[str], desired: set[str], uncertain: frozenset[str]) -> tuple[set[str], set[str]]:
    return desired - current, (current & MANAGED_GROUPS) - desired - uncertain


def _where(entry: DirectoryEntry) -> str:
    """The entry's DN for a report line (a DN too long to keep is shown cut)."""
    return entry.dn if len(entry.dn) <= 300 else entry.dn[:300] + f"… ({len(entry.dn)} characters)"


def _plan_entry(
    entry: DirectoryEntry, known: _Known | None, roles: _Roles, taken: dict[str, str]
) -> tuple[_Op | None, str]:
    """The change one directory entry needs, and a problem (then nothing is done for it).

    ``taken`` maps lower-cased usernames to their owner ("local" or a stable id) and is
    updated as renames and creations are planned.
    """
    if entry.unusable:
        return None, f"{_where(entry)}: {entry.unusable}; left alone."
    if not entry.stable_id:
        return None, f"{entry.dn}: no stable id ({get_config().attrs.stable_id}); left alone."
    if not entry.username:
        return None, f"{entry.dn}: no username ({get_config().attrs.username}); left alone."
    owner = taken.get(entry.username)
    username_free = owner is None or owner == entry.stable_id
    clash = (
        f"{entry.dn}: the username {entry.username!r} belongs to "
        + ("a local user" if owner == "local" else "another directory user")
        + " in pamsite; left alone until one of them is renamed."
    )
    if known is None:
        if entry.disabled:
            return None, ""  # never created: they could not log in anyway
        if not username_free:
            return None, clash
        taken[entry.username] = entry.stable_id
        return _Op(entry.username, entry=entry, create=True, add_roles=roles.desired(entry.stable_id)), ""

    op = _Op(known.username, entry=entry, known=known)
    problem = ""
    if entry.username != known.username:
        if username_free:
            taken.pop(known.username, None)
            taken[entry.username] = entry.stable_id
            op.rename = (known.username, entry.username)
            op.username = entry.username
        else:
            problem = clash.replace("left alone", "not renamed")
    for name in _ENTRY_FIELDS:
        if getattr(entry, name) != getattr(known, name):
            op.fields[name] = {"from": getattr(known, name), "to": getattr(entry, name)}
    if entry.dn != known.directory_dn:
        op.fields["dn"] = {"from": known.directory_dn, "to": entry.dn}
    op.unusable_password = known.password_usable
    if entry.disabled:
        if known.is_active:
            op.deactivate = DISABLED
    elif not known.is_active and known.deactivated_reason in DEACTIVATION_REASONS:
        op.reactivate = True
    active_after = (known.is_active or op.reactivate) and not op.deactivate
    if active_after:
        op.add_roles, op.remove_roles = _role_diff(
            known.roles, roles.desired(entry.stable_id), roles.uncertain
        )
    return op, problem


@dataclass
class _Plan:
    ops: list[_Op]
    problems: list[str]
    seen: int
    skipped: int
    active_before: int
    high_water_mark: str
    server: str

    @property
    def deactivations(self) -> list[_Op]:
        return [op for op in self.ops if op.deactivate]


def _plan(config: LdapConfig, *, full: bool, since: str) -> _Plan:
    """Read the directory (all of it before anything changes) and work out every change."""
    with DirectoryClient(config) as client:
        entries = list(client.iter_users(modified_since="" if full else since))
        roles = _read_roles(client, group_role_map())
        server = client.uri
    known = _known_users()
    taken: dict[str, str] = {}
    for username, external_id, source in User.objects.values_list("username", "external_id", "source"):
        taken[username.lower()] = external_id if source == User.Source.LDAP and external_id else "local"
    problems = list(roles.problems)
    ops: list[_Op] = []
    seen_ids: set[str] = set()
    skipped = 0
    high = since
    # Renames and updates before creations, so a username freed by a rename can be reused.
    ordered = sorted(entries, key=lambda e: e.stable_id not in known)
    for entry in ordered:
        if entry.stable_id and entry.stable_id in seen_ids:
            problems.append(f"{entry.dn}: the same stable id as another entry; left alone.")
            skipped += 1
            continue
        seen_ids.add(entry.stable_id)
        problems.extend(f"{_where(entry)}: {note}." for note in entry.notes)
        if entry.modified and generalized_time_key(entry.modified) > generalized_time_key(high or "0" * 14):
            high = entry.modified
        op, problem = _plan_entry(entry, known.get(entry.stable_id), roles, taken)
        if problem:
            problems.append(problem)
            skipped += 1
        if op is not None and op.changes():
            ops.append(op)
    for stable_id, user in known.items():
        if stable_id in seen_ids or not user.is_active:
            continue
        if full:
            # Gone from the directory (deleted, or out of LDAP_USER_BASE / LDAP_USER_FILTER).
            ops.append(_Op(user.username, known=user, deactivate=LEFT))
        else:
            add, remove = _role_diff(user.roles, roles.desired(stable_id), roles.uncertain)
            if add or remove:
                ops.append(_Op(user.username, known=user, add_roles=add, remove_roles=remove))
    return _Plan(
        ops=ops,
        problems=problems,
        seen=len(entries),
        skipped=skipped,
        active_before=sum(1 for k in known.values() if k.is_active),
        high_water_mark=high,
        server=server,
    )


def _safety_problem(plan: _Plan) -> str:
    count = len(plan.deactivations)
    limit = settings.LDAP_SYNC_MAX_DEACTIVATE
    percent = settings.LDAP_SYNC_MAX_DEACTIVATE_PERCENT
    if count > limit:
        users = "user" if count == 1 else "users"
        return f"it would deactivate {count} {users}, more than LDAP_SYNC_MAX_DEACTIVATE ({limit})"
    if plan.active_before and count * 100 > percent * plan.active_before:
        share = 100 * count / plan.active_before
        return (
            f"it would deactivate {count} of {plan.active_before} active directory users ({share:.0f}%), "
            f"more than LDAP_SYNC_MAX_DEACTIVATE_PERCENT ({percent}%)"
        )
    return ""


# --- Applying --------------------------------------------------------------------------------


def _groups() -> dict[str, Group]:
    return {name: Group.objects.get_or_create(name=name)[0] for name in MANAGED_GROUPS}


def _audit_change(change: Change, user_pk: int, user_repr: str) -> None:
    audit_record(
        action=f"identity.directory.{change.action}",
        object_type=User._meta.label_lower,
        object_id=str(user_pk),
        object_repr=user_repr,
        details={"username": change.username, **change.details},
    )


def _apply_batch(ops: list[_Op], groups: dict[str, Group]) -> None:
    """Creations, updates, role changes and reactivations of a batch, in one transaction."""
    through = User.groups.through
    with transaction.atomic():
        created = []
        for op in ops:
            if op.create:
                e = op.entry
                created.append(
                    User(
                        username=op.username,
                        email=e.email,
                        display_name=e.display_name,
                        first_name=e.first_name,
                        last_name=e.last_name,
                        source=User.Source.LDAP,
                        external_id=e.stable_id,
                        directory_dn=e.dn,
                        password=make_password(None),
                    )
                )
        if created:
            User.objects.bulk_create(created)
        pks = {u.external_id: u.pk for u in created}
        if created and any(pk is None for pk in pks.values()):  # a backend that returns no ids
            pks = dict(User.objects.filter(external_id__in=list(pks)).values_list("external_id", "pk"))
        memberships = []
        for op in ops:
            if op.create:
                pk = pks[op.entry.stable_id]
            else:
                pk = op.known.pk
                _update_user(pk, op)
            memberships += [through(user_id=pk, group_id=groups[r].pk) for r in op.add_roles]
            if op.remove_roles:
                through.objects.filter(user_id=pk, group__name__in=op.remove_roles).delete()
            for change in op.changes():
                if change.action != "deactivated":
                    _audit_change(change, pk, (op.entry.display_name if op.entry else "") or op.username)
        if memberships:
            through.objects.bulk_create(memberships, ignore_conflicts=True)


def _update_values(op: _Op) -> dict:
    values: dict = {}
    if op.rename:
        values["username"] = op.rename[1]
    for name, change in op.fields.items():
        values["directory_dn" if name == "dn" else name] = change["to"]
    if op.unusable_password:
        values["password"] = make_password(None)
    if op.reactivate:
        values["is_active"] = True
        values["deactivated_reason"] = ""
    return values


def _update_user(pk: int, op: _Op) -> None:
    values = _update_values(op)
    if values:
        User.objects.filter(pk=pk).update(**values)


def directory_user_deactivate(
    *, user_pk: int, reason: str, updates: dict | None = None, changes: Iterable[Change] = ()
) -> Change | None:
    """Deactivate one directory user (never delete) and end their access, in one transaction.

    The deactivation itself is ``identity.users.user_deactivate`` (the one service every
    path uses), with no acting user: their web sessions end. The gateway sees the user
    inactive and cuts their live sessions, telling them "Your pamsite account was
    deactivated: left the directory" (no one is named: no administrator acted); the access
    worker's sweep, run right after every sync, revokes their live grants and cancels their
    pending and approved requests (``access.services.grants_of_inactive_revoke``,
    ``requests_of_inactive_cancel``). Other
    updates of the same user seen in the same run (``updates``: field values, such as a
    rename; ``changes``: their audit events) are applied first. Returns the "deactivated"
    change, or None if already inactive.
    """
    with transaction.atomic():
        user = User.objects.select_for_update(no_key=True).filter(pk=user_pk, is_active=True).first()
        if user is None:
            return None
        if updates:
            User.objects.filter(pk=user.pk).update(**updates)
            user.refresh_from_db()
        for change in changes:
            _audit_change(change, user.pk, str(user))
        result = user_deactivate(user=user, acting_user=None, reason=reason, via="directory sync")
        if result is None:
            return None
        details = result.details()
        del details["invitations_revoked"]  # directory users are never invited
        return Change("deactivated", user.username, {"reason": reason, **details})


# --- Runs ------------------------------------------------------------------------------------


def _run_start(*, full: bool, dry_run: bool, trigger: str) -> DirectorySyncRun:
    now = timezone.now()
    DirectorySyncRun.objects.filter(
        state=DirectorySyncRun.State.RUNNING, started_at__lt=now - STALE_RUN
    ).update(
        state=DirectorySyncRun.State.FAILED,
        finished_at=now,
        error="Interrupted: the process stopped before the run ended.",
    )
    try:
        with transaction.atomic():
            return DirectorySyncRun.objects.create(
                full=full, dry_run=dry_run, trigger=trigger, started_at=now
            )
    except IntegrityError:
        running = DirectorySyncRun.objects.filter(state=DirectorySyncRun.State.RUNNING).first()
        since = f" since {local_time(running.started_at, '%Y-%m-%d %H:%M:%S %Z')}" if running else ""
        raise DirectorySyncBusy(
            f"Another directory sync is running{since}; try again when it has ended."
        ) from None


def last_successful_run(*, full_only: bool = False) -> DirectorySyncRun | None:
    """The newest run that succeeded and was not a dry run (full ones only, if asked)."""
    runs = DirectorySyncRun.objects.filter(state=DirectorySyncRun.State.SUCCEEDED, dry_run=False)
    if full_only:
        runs = runs.filter(full=True)
    return runs.order_by("-started_at", "-pk").first()


def _finish(result: SyncResult, plan: _Plan | None, *, state: str, changes: list[Change]) -> None:
    run = result.run
    run.state = state
    run.finished_at = timezone.now()
    run.error = result.error[:5000]
    run.problems = result.problems[:CHANGES_KEPT]
    run.changes = [c.as_json() for c in changes[:CHANGES_KEPT]]
    if plan is not None:
        run.seen = plan.seen
        run.skipped = plan.skipped
        run.server = plan.server[:255]
        if state == DirectorySyncRun.State.SUCCEEDED and not run.dry_run:
            run.high_water_mark = plan.high_water_mark[:40]
    run.save()


def _pam_admin_emails() -> list[str]:
    return sorted(
        set(
            User.objects.filter(groups__name=Role.PAM_ADMIN, is_active=True)
            .exclude(email="")
            .values_list("email", flat=True)
        )
    )


def _notify_refused(result: SyncResult, plan: _Plan) -> None:
    """Tell the pam-admins that the safety limit stopped a run (never undoes anything if it fails)."""
    recipients = _pam_admin_emails()
    if not recipients:
        return
    names = [op.username for op in plan.deactivations]
    shown = "\n".join(f"  - {n}" for n in names[:50]) + (
        f"\n  … and {len(names) - 50} more" if len(names) > 50 else ""
    )
    body = (
        f"The directory sync of {local_time(result.run.started_at)} changed nothing: "
        f"{result.error}\n\n"
        f"It would have deactivated these users and revoked their access:\n{shown}\n\n"
        "If the directory (or the sync's LDAP_USER_BASE / LDAP_USER_FILTER) is wrong, fix it; the next "
        "run will find nothing to deactivate. If these people really left, run\n"
        "  manage.py sync_ldap --full --override-safety-limit\n"
        f"Runs: {settings.PAMSITE_BASE_URL.rstrip('/')}/users/directory/\n"
    )
    try:
        send_mail(
            "[pamsite] Directory sync stopped by its safety limit",
            body,
            settings.DEFAULT_FROM_EMAIL,
            recipients,
        )
    except Exception:
        logger.exception("could not e-mail the pam-admins about the refused directory sync")


def directory_sync(
    *,
    full: bool,
    dry_run: bool,
    override_safety_limit: bool = False,
    trigger: str = DirectorySyncRun.Trigger.COMMAND,
) -> SyncResult:
    """Mirror the directory into pamsite (see the module docstring); returns what happened.

    ``full``: read every user and deactivate those no longer there; else only users changed
    since the last successful run (the first run is always full). ``dry_run``: work out the
    changes and record the run, change nothing. ``override_safety_limit``: apply a run the
    limit would stop (audited). The run is recorded as a DirectorySyncRun in every case;
    DirectoryError, the safety limit or a database error make it a failed one (``result.ok``
    False), with nothing changed for the first two. DirectorySyncBusy if one is running.
    """
    config = get_config()
    if not config.enabled:
        raise DirectoryNotConfigured("LDAP is not configured: set LDAP_SERVER_URI (see the README).")
    previous = last_successful_run()
    since = previous.high_water_mark if previous is not None else ""
    if not since:
        full = True
    run = _run_start(full=full, dry_run=dry_run, trigger=trigger)
    result = SyncResult(run=run)
    try:
        _sync(result, config, since=since, override_safety_limit=override_safety_limit)
    except BaseException as exc:
        # Whatever happened, the run must not stay "running" (it would block the next ones).
        logger.exception("directory sync: run %s failed", run.pk)
        result.error = result.error or f"Unexpected error: {exc.__class__.__name__}: {exc}"
        with contextlib.suppress(Exception):
            _finish(result, None, state=DirectorySyncRun.State.FAILED, changes=result.changes)
        raise
    return result


def _sync(result: SyncResult, config: LdapConfig, *, since: str, override_safety_limit: bool) -> None:
    run = result.run
    plan = None
    try:
        plan = _plan(config, full=run.full, since=since)
    except DirectoryError as exc:
        result.error = str(exc)
    result.problems = plan.problems if plan else []
    planned = [c for op in plan.ops for c in op.changes()] if plan else []
    safety = _safety_problem(plan) if plan is not None else ""
    if safety and not override_safety_limit:
        result.error = f"Safety limit: {safety}. Nothing was changed."
        result.refused = True
    if result.error or run.dry_run:
        # Nothing changes: record what the run would have done, and why it stopped.
        result.changes = planned
        if not result.error:
            _count(run, planned)
        state = DirectorySyncRun.State.FAILED if result.error else DirectorySyncRun.State.SUCCEEDED
        _finish(result, plan, state=state, changes=planned)
        if result.error and not run.dry_run:
            audit_record(
                action="identity.directory.sync_failed",
                obj=run,
                details={
                    "full": run.full,
                    "error": result.error[:1000],
                    "refused": result.refused,
                    "would_deactivate": len(plan.deactivations) if plan else 0,
                },
            )
            if result.refused:
                _notify_refused(result, plan)
        return
    try:
        _apply(plan, done=result.changes)
    except Exception as exc:
        logger.exception("directory sync: applying the changes failed")
        result.error = f"Applying the changes failed after {len(result.changes)} of them: {exc}"
    _count(run, result.changes)
    state = DirectorySyncRun.State.FAILED if result.error else DirectorySyncRun.State.SUCCEEDED
    _finish(result, plan, state=state, changes=result.changes)
    audit_record(
        action="identity.directory.sync_failed" if result.error else "identity.directory.synced",
        obj=run,
        details={
            "full": run.full,
            "server": run.server,
            "seen": run.seen,
            "created": run.created,
            "updated": run.updated,
            "deactivated": run.deactivated,
            "reactivated": run.reactivated,
            "skipped": run.skipped,
            "problems": len(result.problems),
            "safety_limit_overridden": bool(safety),
            **({"error": result.error[:1000]} if result.error else {}),
        },
    )


def _count(run: DirectorySyncRun, changes: list[Change]) -> None:
    users = defaultdict(set)
    for change in changes:
        users[change.action].add(change.username)
    run.created = len(users["created"])
    run.deactivated = len(users["deactivated"])
    run.reactivated = len(users["reactivated"])
    run.updated = len((users["updated"] | users["renamed"] | users["roles_changed"]) - users["created"])


def _apply(plan: _Plan, *, done: list[Change]) -> None:
    """Make the planned changes, appending each one made to ``done`` (also when one fails)."""
    groups = _groups()
    others = [op for op in plan.ops if not op.deactivate]
    # Renames and updates (others' usernames freed) before creations: the plan's order.
    for start in range(0, len(others), BATCH):
        batch = others[start : start + BATCH]
        try:
            _apply_batch(batch, groups)
        except (IntegrityError, DataError):
            # One user's change clashed (a username taken meanwhile) or did not fit a column:
            # apply them one by one, so the others are not held back by it.
            for op in batch:
                try:
                    _apply_batch([op], groups)
                except (IntegrityError, DataError) as exc:
                    plan.problems.append(f"{op.username}: not applied ({exc}).")
                    plan.skipped += 1
                    continue
                done += op.changes()
            continue
        for op in batch:
            done += op.changes()
    for op in plan.deactivations:
        earlier = [c for c in op.changes() if c.action not in ("deactivated", "roles_changed")]
        change = directory_user_deactivate(
            user_pk=op.known.pk, reason=op.deactivate, updates=_update_values(op), changes=earlier
        )
        if change is not None:
            done += [*earlier, change]


# --- Logging in ------------------------------------------------------------------------------


def directory_login_user(*, dn: str) -> User:
    """The pamsite user for a directory user whose password the directory just accepted.

    Reads the entry with the sync account and applies it as a sync would (created on a
    first login, renamed, roles from the mapped groups), audited the same way; never
    deactivates. DirectoryLoginRefused when the entry is not a user the sync would take,
    is disabled, its username belongs to someone else, or pamsite has deactivated them.
    DirectoryError when the directory cannot be read.
    """
    config = get_config()
    with DirectoryClient(config) as client:
        entry = client.user_by_dn(dn)
        if entry is None:
            raise DirectoryLoginRefused("not a user under LDAP_USER_BASE matching LDAP_USER_FILTER")
        if entry.disabled:
            raise DirectoryLoginRefused(DISABLED)
        mapping = group_role_map()
        existing = client.existing_groups(group for group, _ in mapping)
        members = {
            normalise_dn(group): ({entry.stable_id} if client.is_member(entry, group) else set())
            for group, _ in mapping
            if normalise_dn(group) in existing
        }
    uncertain = frozenset(role for group, role in mapping if normalise_dn(group) not in existing)
    roles = _Roles(
        members=members,
        mapping=[(normalise_dn(g), r) for g, r in mapping if normalise_dn(g) in existing],
        uncertain=uncertain,
        problems=[],
    )
    with transaction.atomic():
        row = (
            User.objects.select_for_update(no_key=True)
            .filter(source=User.Source.LDAP, external_id=entry.stable_id)
            .values_list(*_KNOWN_FIELDS)
            .first()
        )
        known = _known(row) if row else None
        if known is not None:
            known.roles = set(
                User.groups.through.objects.filter(
                    user_id=known.pk, group__name__in=MANAGED_GROUPS
                ).values_list("group__name", flat=True)
            )
            if not known.is_active:
                raise DirectoryLoginRefused("deactivated in pamsite")
        taken = {}
        owner = (
            User.objects.filter(username__iexact=entry.username).values_list("external_id", "source").first()
        )
        if owner is not None:
            external_id, source = owner
            taken[entry.username] = external_id if source == User.Source.LDAP and external_id else "local"
        if known is not None:
            taken.setdefault(known.username, entry.stable_id)
        op, problem = _plan_entry(entry, known, roles, taken)
        if problem or op is None:
            raise DirectoryLoginRefused(problem or "not a user pamsite takes")
        op.deactivate = ""
        if op.changes():
            try:
                _apply_batch([op], _groups())
            except IntegrityError:
                # A second sign-in (or the sync) created or renamed them a moment ago: theirs stands.
                logger.info("directory login: %s was changed concurrently", entry.dn)
        return User.objects.get(source=User.Source.LDAP, external_id=entry.stable_id)


# --- What the Directory page shows (pam-admins only) -------------------------------------------


@dataclass
class DirectoryOverview:
    """The Directory page: the configuration in force, the last runs, the mapping."""

    config: LdapConfig
    runs: list[DirectorySyncRun]
    mappings: list[LdapGroupMapping]
    mapping_from_settings: list[tuple[str, str]]  # shown when no row exists yet
    active_users: int
    deactivated_users: int


def directory_overview_for(*, acting_user: User, runs: int = 25) -> DirectoryOverview:
    """Everything the Directory page shows; pam-admins only (PermissionDenied otherwise)."""
    require_role(acting_user, Role.PAM_ADMIN)
    mappings = list(LdapGroupMapping.objects.select_related("created_by").order_by("role", "group_dn"))
    directory_users = User.objects.filter(source=User.Source.LDAP)
    return DirectoryOverview(
        config=get_config(),
        runs=list(DirectorySyncRun.objects.order_by("-started_at", "-pk")[:runs]),
        mappings=mappings,
        mapping_from_settings=[] if mappings else list(getattr(settings, "LDAP_GROUP_ROLE_MAP", [])),
        active_users=directory_users.filter(is_active=True).count(),
        deactivated_users=directory_users.filter(is_active=False).count(),
    )
