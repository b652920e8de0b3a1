"""Verifying Twilio's webhook signatures: JSON bodies (Event Streams) and forms (classic).

Twilio appends ``bodySHA256=<hex sha256 of the body>`` to the sink URL's query string and
signs that whole URL. The vendor's RequestValidator checks both the hash and the signature
when it is given the raw body as a string; a dict would skip the body check, and a URL
without ``bodySHA256`` makes it raise, so both are refused here before it is called.
Classic webhooks (status callbacks, inbound SMS) are signed over the URL followed by the
sorted form parameters, which the same validator checks when given the params.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from urllib.parse import parse_qs, urlsplit

from twilio.request_validator import HMAC_SHA1, RequestValidator, get_signature_algorithm


def public_request_url(public_base: str, path: str, query: str) -> str:
    """The URL Twilio called, rebuilt from the configured public base (proxies change Host)."""
    url = public_base.rstrip("/") + path
    return f"{url}?{query}" if query else url


def looks_like_signature(signature: str | None) -> bool:
    """Base64 of an HMAC-SHA1 or HMAC-SHA256 digest: the only shapes Twilio sends. Refusals
    of anything else are noise, not a sign that the organization's token changed."""
    if not signature or len(signature) > 64:
        return False
    try:
        digest = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(digest) in (20, 32)


def verify_form(
    url: str,
    params: Mapping[str, str],
    signature: str | None,
    *,
    auth_token: str | None,
    shared_key: str | None = None,
    settings_header: str | None = None,
) -> bool:
    """A classic webhook: the signature covers the URL and the sorted form parameters."""
    if not signature:
        return False
    secret, algorithm = _secret_for(auth_token, shared_key, settings_header)
    if secret is None:
        return False
    return _validate(secret, url, dict(params), signature, algorithm)


def _secret_for(
    auth_token: str | None, shared_key: str | None, settings_header: str | None
) -> tuple[str | None, str]:
    if settings_header:
        # Announced SharedKey signature (HMAC-SHA256 or as the header says).
        return shared_key, get_signature_algorithm(settings_header)
    return auth_token, HMAC_SHA1


def verify(
    url: str,
    raw_body: str,
    signature: str | None,
    *,
    auth_token: str | None,
    shared_key: str | None = None,
    settings_header: str | None = None,
) -> bool:
    if not signature:
        return False
    if "bodySHA256" not in parse_qs(urlsplit(url).query):
        return False
    secret, algorithm = _secret_for(auth_token, shared_key, settings_header)
    if secret is None:
        return False
    return _validate(secret, url, raw_body, signature, algorithm)


def _validate(
    secret: str, url: str, params: str | dict[str, str], signature: str, algorithm: str
) -> bool:
    try:
        return bool(RequestValidator(secret).validate(url, params, signature, algorithm))
    except Exception:  # malformed input must end in "not valid", never in a 500
        return False
