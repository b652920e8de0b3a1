"""HTTP Basic authentication as Twilio does it: account SID as user, auth token as password."""

from __future__ import annotations

import base64
import binascii
import hmac

from fastapi import Request

from loquent.simulator.errors import unauthorized
from loquent.simulator.state import Account, SimStore


def parse_basic(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, encoded = header.partition(" ")
    if scheme.lower() != "basic" or not encoded:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


def basic_user(request: Request) -> str | None:
    """The user name of the request's Basic credentials, for the request log (never the token)."""
    credentials = parse_basic(request.headers.get("authorization"))
    return credentials[0] if credentials else None


def authenticate(store: SimStore, request: Request) -> Account:
    credentials = parse_basic(request.headers.get("authorization"))
    if credentials is None:
        raise unauthorized()
    user, password = credentials
    account = store.accounts.get(user)
    if account is None or not hmac.compare_digest(
        account.auth_token.encode("utf-8"), password.encode("utf-8")
    ):
        raise unauthorized()
    if account.status != "active":
        raise unauthorized()
    return account


def authenticate_for(store: SimStore, request: Request, account_sid: str) -> Account:
    """Authenticate, and require the account in the URL to be the authenticated one.

    There are no subaccounts here, so credentials for another account get the same 401 as wrong
    credentials.
    """
    account = authenticate(store, request)
    if account.sid != account_sid:
        raise unauthorized()
    return account
