"""Background jobs of the audit trail: thin wrappers over the services."""

from __future__ import annotations

from celery import shared_task

from audit.forwarding import audit_forward


@shared_task(name="audit.forward")
def forward_task() -> dict:
    """Forward pending events to every AUDIT_FORWARD destination (Celery beat, every AUDIT_FORWARD_INTERVAL).

    A receiver that is down does not fail the task: its cursor stays and the next run retries.
    """
    return {
        result.destination: {"sent": result.sent, "backlog": result.backlog, "error": result.error}
        for result in audit_forward()
    }
