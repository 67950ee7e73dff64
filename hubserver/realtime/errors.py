"""Structured errors: every failure of a client event is answered with
``{"type": "error", "code", "message", "request_id"}`` and the connection stays open.

| code | when | HTTP (SSE/poll) |
|---|---|---|
| ``bad_json`` | a frame is not valid JSON (or is binary) | |
| ``bad_request`` | not a JSON object, no ``type``, a missing or mistyped field | 400 |
| ``unknown_event`` | a ``type`` the protocol does not have | |
| ``unknown_device_type`` | ``device_type`` names no registered type | 404 |
| ``unknown_device`` | ``device_id`` names no device of that type | 404 |
| ``permission_denied`` | the user lacks the API's permission (``view`` / ``change``) | 403 |
| ``invalid_command`` | no such command, or its payload fails the Command's schema | |
| ``limit_exceeded`` | more than ``MAX_SUBSCRIPTIONS`` subscriptions on one connection | |
| ``not_authenticated`` | (HTTP only; a WebSocket is closed with 4401 instead) | 401 |
| ``too_slow`` | sent right before closing (4429) a viewer that fell ``QUEUE_SIZE`` events behind | |
| ``internal_error`` | a bug; logged with its traceback | 500 |
"""

BAD_JSON = "bad_json"
BAD_REQUEST = "bad_request"
UNKNOWN_EVENT = "unknown_event"
UNKNOWN_DEVICE_TYPE = "unknown_device_type"
UNKNOWN_DEVICE = "unknown_device"
PERMISSION_DENIED = "permission_denied"
INVALID_COMMAND = "invalid_command"
LIMIT_EXCEEDED = "limit_exceeded"
NOT_AUTHENTICATED = "not_authenticated"
TOO_SLOW = "too_slow"
INTERNAL_ERROR = "internal_error"

# WebSocket close codes.
CLOSE_NOT_AUTHENTICATED = 4401
CLOSE_FORBIDDEN_ORIGIN = 4403
CLOSE_TOO_SLOW = 4429

HTTP_STATUS = {
    BAD_REQUEST: 400,
    NOT_AUTHENTICATED: 401,
    PERMISSION_DENIED: 403,
    UNKNOWN_DEVICE_TYPE: 404,
    UNKNOWN_DEVICE: 404,
    INTERNAL_ERROR: 500,
}


class EventError(Exception):
    """Raised anywhere under a handler: answered as a structured error with this code."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def error_event(code, message, request_id=None):
    return {"type": "error", "code": code, "message": message, "request_id": request_id}
