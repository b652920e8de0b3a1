"""Phone number normalization to E.164."""

from __future__ import annotations

import phonenumbers


class InvalidPhoneNumber(ValueError):
    pass


def normalize_e164(raw: str, default_region: str | None = None) -> str:
    """Return the E.164 form of ``raw`` or raise InvalidPhoneNumber.

    Numbers without a leading ``+`` need a region; Twilio always sends E.164, so the
    strictness only bites on hand-typed input.
    """
    if not isinstance(raw, str) or not raw.strip() or len(raw) > 40:
        raise InvalidPhoneNumber("phone number is empty or too long")
    try:
        parsed = phonenumbers.parse(raw.strip(), default_region)
    except phonenumbers.NumberParseException as exc:
        raise InvalidPhoneNumber(f"not a phone number: {raw!r}") from exc
    if not phonenumbers.is_possible_number(parsed):
        raise InvalidPhoneNumber(f"not a possible phone number: {raw!r}")
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)


def try_normalize(raw: str) -> str | None:
    """E.164 if ``raw`` is a phone number; None for other addresses (short codes, channels)."""
    try:
        return normalize_e164(raw)
    except InvalidPhoneNumber:
        return None
