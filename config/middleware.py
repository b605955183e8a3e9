"""Every request carries an id: the client's ``X-Request-Id`` when it sends a sane one, otherwise
a fresh one; it is echoed in the response and written to the audit log with admin actions."""
import re
import uuid

_SANE = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


class RequestIdMiddleware:
    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        given = request.META.get("HTTP_X_REQUEST_ID", "")
        request.request_id = given if _SANE.match(given) else uuid.uuid4().hex
        response = self.get_response(request)
        response["X-Request-Id"] = request.request_id
        return response
