"""The one way to write the audit log, and the one way to check an admin's permission.

``audit_record`` writes in the caller's transaction: call it inside the atomic block of the action
it records, so the action and its entry commit together or not at all."""
from __future__ import annotations

from dataclasses import dataclass

from django.contrib.auth import get_user_model

from config.errors import PermissionDenied

from .models import AuditEntry


@dataclass(frozen=True)
class AdminActor:
    """The admin behind an action and the request that carried it (for the audit log)."""
    user_id: int
    request_id: str = ""


def permission_require(*, user_id: int | None, permission: str) -> None:
    """PermissionDenied (403) unless the user is an active staff member with ``permission``
    (``app_label.codename``; superusers have every permission). ``is_staff`` alone grants nothing."""
    user = get_user_model().objects.filter(pk=user_id).first() if user_id else None
    if user is None or not (user.is_active and user.is_staff and user.has_perm(permission)):
        raise PermissionDenied(f"This needs the permission {permission}.", code="permission_required",
                               extra={"permission": permission})


def audit_record(*, actor: AdminActor | None, action: str, target_type: str, target_id: object = "",
                 reason: str = "", details: dict | None = None) -> AuditEntry:
    """Append one entry. ``actor`` None is the platform itself (a sweep, a migration)."""
    name = ""
    if actor is not None and actor.user_id:
        name = get_user_model().objects.filter(pk=actor.user_id).values_list("username", flat=True).first() or ""
    return AuditEntry.objects.create(
        actor_id=actor.user_id if actor else None, actor_name=name or "platform", action=action[:60],
        target_type=target_type[:60], target_id=str(target_id)[:60], reason=(reason or "")[:2000],
        details=details or {}, request_id=(actor.request_id if actor else "")[:100])
