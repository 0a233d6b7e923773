"""E-mail notifications of the access workflow (Django's e-mail backend).

A notification that cannot be sent is logged and never undoes the workflow step
that caused it. No secret ever goes into an e-mail.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.contrib.auth.models import Group
from django.core.mail import send_mail

from audit.timefmt import local_time
from common.roles import Role

logger = logging.getLogger(__name__)


def _emails_of(role: str, *, exclude_id: int | None = None) -> list[str]:
    group = Group.objects.filter(name=role).first()
    if group is None:
        return []
    users = group.user_set.filter(is_active=True).exclude(email="")
    if exclude_id is not None:
        users = users.exclude(pk=exclude_id)
    return sorted(set(users.values_list("email", flat=True)))


def _link(obj) -> str:
    return settings.PAMSITE_BASE_URL.rstrip("/") + obj.get_absolute_url()


def _send(subject: str, body: str, recipients: list[str]) -> None:
    if not recipients:
        return
    try:
        send_mail(f"[pamsite] {subject}", body, settings.DEFAULT_FROM_EMAIL, recipients)
    except Exception:
        logger.exception("could not send the notification %r to %d recipient(s)", subject, len(recipients))


def new_request(req) -> None:
    _send(
        f"Approval needed: {req.account.slug} for {req.requester.username}",
        f"{req.requester} asks for {req.account.slug} on {req.account.target} "
        f"for {req.duration_minutes} minutes.\nTicket: {req.ticket or '-'}\nReason: {req.reason}\n\n"
        f"Decide: {settings.PAMSITE_BASE_URL.rstrip('/')}/access/approvals/\n",
        _emails_of(Role.APPROVER, exclude_id=req.requester_id),
    )


def decision(req) -> None:
    if not req.requester.email:
        return
    _send(
        f"Your request for {req.account.slug} was {req.get_state_display().lower()}",
        f"Request #{req.pk} for {req.account.slug}: {req.get_state_display()}.\nDetails: {_link(req)}\n",
        [req.requester.email],
    )


def expiring(grant) -> None:
    if not grant.user.email:
        return
    _send(
        f"Your access to {grant.account.slug} ends at {local_time(grant.ends_at, '%H:%M %Z')}",
        f"Your grant for {grant.account.slug} ends at {local_time(grant.ends_at)}; open sessions will "
        f"be closed then. Save your work, or ask for a new grant.\n{_link(grant)}\n",
        [grant.user.email],
    )


def break_glass(grant) -> None:
    _send(
        f"EMERGENCY ACCESS: {grant.user.username} on {grant.account.slug}",
        f"{grant.user} used break-glass access to {grant.account.slug} "
        f"until {local_time(grant.ends_at)}.\n"
        f"Justification: {grant.request.reason}\nAn approver must review it: {_link(grant)}\n",
        sorted(set(_emails_of(Role.AUDITOR) + _emails_of(Role.APPROVER, exclude_id=grant.user_id))),
    )


def break_glass_without_vault(grant, vault_message: str) -> None:
    """Security alert to pam-admins: emergency access went ahead on the sealed emergency credential."""
    account = grant.account
    if account.kind == account.Kind.STATIC:
        then = (
            "pamsite rotates this password on the target as soon as Vault is back, so the envelope's "
            "copy stops working; then seal the new password in a new envelope."
        )
    else:
        then = (
            "pamsite cannot rotate this kind of account's emergency password itself: once the "
            "emergency is over, change it on the target, seal the new one in a new envelope and clear "
            f"'emergency rotation due' on the account {account.slug}."
        )
    _send(
        f"SECURITY ALERT: break-glass without Vault: {grant.user.username} on {account.slug}",
        f"Vault could not be used when {grant.user} activated emergency access to {account.slug} on "
        f"{account.target}: {vault_message}\n\n"
        f"pamsite could not check the credential out, so {grant.user.username} was told to open the "
        f"sealed emergency envelope of {account.slug} (login {account.username}). The grant lasts until "
        f"{local_time(grant.ends_at)}; what is done with it is not recorded by the gateway.\n"
        f"Justification: {grant.request.reason}\n\n"
        f"Bring Vault back (unseal or restart it). {then}\n{_link(grant)}\n",
        _emails_of(Role.PAM_ADMIN),
    )


def cleanup_failed(grant, message: str, attempts: int) -> None:
    _send(
        f"Credential release failing for {grant.account.slug}",
        f"After grant #{grant.pk} ended, pamsite could not release or rotate the credential of "
        f"{grant.account.slug} ({attempts} attempt(s)); it keeps retrying.\n"
        f"Last error: {message}\n{_link(grant)}\n",
        _emails_of(Role.PAM_ADMIN),
    )
