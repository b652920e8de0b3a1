"""Verifying Twilio's webhook signatures for JSON bodies (Event Streams).

Twilio appends ``bodySHA256=<hex sha256 of the body>`` to the sink URL's query string and
signs that whole URL. The vendor's RequestValidator checks both the hash and the signature
when it is given the raw body as a string; a dict would skip the body check, and a URL
without ``bodySHA256`` makes it raise, so both are refused here before it is called.
"""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from twilio.request_validator import HMAC_SHA1, RequestValidator, get_signature_algorithm


def public_request_url(public_base: str, path: str, query: str) -> str:
    """The URL Twilio called, rebuilt from the configured public base (proxies change Host)."""
    url = public_base.rstrip("/") + path
    return f"{url}?{query}" if query else url


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
    if settings_header:
        # Announced SharedKey signature (HMAC-SHA256 or as the header says).
        if not shared_key:
            return False
        return _validate(
            shared_key, url, raw_body, signature, get_signature_algorithm(settings_header)
        )
    if not auth_token:
        return False
    return _validate(auth_token, url, raw_body, signature, HMAC_SHA1)


def _validate(secret: str, url: str, raw_body: str, signature: str, algorithm: str) -> bool:
    try:
        return bool(RequestValidator(secret).validate(url, raw_body, signature, algorithm))
    except Exception:  # malformed input must end in "not valid", never in a 500
        return False
