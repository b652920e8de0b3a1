"""Twilio's error JSON, for the REST and Event Streams routes of the simulator."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse

# Twilio error codes for the HTTP statuses a fault rule (or a route) may answer with.
STATUS_ERRORS: dict[int, tuple[int, str]] = {
    400: (20001, "Bad Request"),
    401: (20003, "Authenticate"),
    403: (20403, "Forbidden"),
    405: (20004, "Method not allowed"),
    429: (20429, "Too Many Requests"),
    500: (20500, "Internal Server Error"),
    502: (20502, "Bad Gateway"),
    503: (20503, "Service Unavailable"),
    504: (20504, "Gateway Timeout"),
}

# What Twilio answers (HTTP 400) when it refuses a text at ``POST .../Messages.json``;
# ``{to}`` / ``{from_}`` are filled in. Codes not listed get a generic message.
SEND_ERROR_MESSAGES: dict[int, str] = {
    21211: "Invalid 'To' Phone Number: {to}",
    21408: "Permission to send an SMS has not been enabled for the region indicated by the "
    "'To' number: {to}.",
    21606: "The 'From' phone number provided ({from_}) is not a valid message-capable Twilio "
    "phone number for this destination.",
    21610: "Attempt to send to unsubscribed recipient",
    21612: "The 'To' phone number: {to}, is not currently reachable using the 'From' phone "
    "number: {from_} via SMS.",
    21614: "'To' number {to} is not a valid mobile number",
}


def send_error_message(code: int, *, to: str, from_: str) -> str:
    template = SEND_ERROR_MESSAGES.get(code, "The message could not be sent (error {code}).")
    return template.format(to=to, from_=from_, code=code)


WWW_AUTHENTICATE = {"WWW-Authenticate": 'Basic realm="Twilio API"'}


class TwilioError(Exception):
    """An error answered the way Twilio answers it: ``{code, message, more_info, status}``."""

    def __init__(
        self, status: int, code: int, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def body(self) -> dict[str, object]:
        return {
            "code": self.code,
            "message": self.message,
            "more_info": f"https://www.twilio.com/docs/errors/{self.code}",
            "status": self.status,
        }

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def not_found(path: str) -> TwilioError:
    return TwilioError(404, 20404, f"The requested resource {path} was not found")


def unauthorized() -> TwilioError:
    return TwilioError(401, 20003, "Authenticate", headers=dict(WWW_AUTHENTICATE))


def bad_request(code: int, message: str) -> TwilioError:
    return TwilioError(400, code, message)


def for_status(status: int, path: str, headers: dict[str, str] | None = None) -> TwilioError:
    """The error Twilio would answer with ``status`` for a request to ``path``."""
    if status == 404:
        error = not_found(path)
        error.headers.update(headers or {})
        return error
    code, message = STATUS_ERRORS.get(status, (20000 + status, "Error"))
    merged = dict(WWW_AUTHENTICATE) if status == 401 else {}
    merged.update(headers or {})
    return TwilioError(status, code, message, headers=merged)


async def handle_twilio_error(_request: Request, exc: Exception) -> JSONResponse:
    if not isinstance(exc, TwilioError):  # registered for TwilioError only
        raise exc
    return exc.response()
