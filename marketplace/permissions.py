from rest_framework.permissions import BasePermission

from .actors import actor_for_request


class IsOrganisationMember(BasePermission):
    """Authenticated, and acting for an organisation (platform admins pass too)."""

    message = "Authentication with an organisation's API key or member login is required."

    def has_permission(self, request, view) -> bool:
        if not (request.user and request.user.is_authenticated):
            return False
        actor = actor_for_request(request)
        return actor.organisation is not None or actor.is_platform_admin


class IsPlatformAdmin(BasePermission):
    message = "Platform admins only."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.is_authenticated and actor_for_request(request).is_platform_admin)
