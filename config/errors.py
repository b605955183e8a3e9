"""The application's error hierarchy. Services raise these; one handler maps them to HTTP.

Every error carries a machine-readable ``code``, a human ``message`` and, where a particular input
field is at fault, ``fields`` mapping a dotted field path to a list of messages.
"""
from __future__ import annotations


class ApplicationError(Exception):
    status_code = 400
    code = "application_error"

    def __init__(self, message: str, *, fields: dict[str, list[str]] | None = None, code: str | None = None,
                 extra: dict | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fields = fields or {}
        self.extra = extra or {}
        if code:
            self.code = code


class ValidationFailed(ApplicationError):
    status_code = 400
    code = "validation_error"

    @classmethod
    def on(cls, field: str, message: str) -> "ValidationFailed":
        return cls(message, fields={field: [message]})


class NotFound(ApplicationError):
    status_code = 404
    code = "not_found"


class PermissionDenied(ApplicationError):
    status_code = 403
    code = "permission_denied"


class Conflict(ApplicationError):
    status_code = 409
    code = "conflict"


class InvalidTransition(Conflict):
    code = "invalid_transition"


class CapacityUnavailable(Conflict):
    code = "capacity_unavailable"


class Unavailable(ApplicationError):
    status_code = 503
    code = "unavailable"
