"""Who is calling: the organisation and role behind a request, whether by API key or session."""
from __future__ import annotations

from dataclasses import dataclass

from audit.services import AdminActor
from config.errors import PermissionDenied

from .models import Organisation, Role

WRITE_ROLES = {Role.OWNER, Role.OPERATOR}


@dataclass(frozen=True)
class Actor:
    organisation: Organisation | None
    role: str | None
    user_id: int | None = None
    api_key_id: int | None = None
    is_platform_admin: bool = False

    def require_write(self) -> None:
        if self.role not in WRITE_ROLES:
            raise PermissionDenied("This key or member has read-only access.")

    def require_owner(self) -> None:
        if self.role != Role.OWNER:
            raise PermissionDenied("Only an organisation owner can do this.")

    def require_supplier(self) -> Organisation:
        org = self.require_organisation()
        if not org.is_supplier:
            raise PermissionDenied("Only supplier organisations can manage nodes and listings.")
        return org

    def require_buyer(self) -> Organisation:
        org = self.require_organisation()
        if not org.is_buyer:
            raise PermissionDenied("Only buyer organisations can place orders.")
        return org

    def require_organisation(self) -> Organisation:
        if self.organisation is None:
            raise PermissionDenied("This account does not belong to an organisation.")
        return self.organisation


def actor_for_request(request) -> Actor:
    cached = getattr(request, "_sanduisan_actor", None)
    if cached is not None:
        return cached
    from .authentication import ApiKeyPrincipal

    user = request.user
    if isinstance(user, ApiKeyPrincipal):
        key = user.api_key
        actor = Actor(organisation=key.organisation, role=key.role, api_key_id=key.pk)
    elif user is not None and user.is_authenticated:
        membership = getattr(user, "membership", None) if hasattr(user, "membership") else None
        actor = Actor(
            organisation=membership.organisation if membership else None,
            role=membership.role if membership else None,
            user_id=user.pk,
            is_platform_admin=bool(user.is_staff),
        )
    else:
        actor = Actor(organisation=None, role=None)
    request._sanduisan_actor = actor
    return actor


def admin_actor_for_request(request) -> AdminActor:
    """The admin user behind a request and the request's id, for permission checks and the audit log."""
    return AdminActor(user_id=request.user.pk, request_id=getattr(request, "request_id", ""))
