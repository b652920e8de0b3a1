"""CSRF protection for the login form, before any session exists: a signed double submit.

The browser holds a random nonce in an HttpOnly, SameSite=Lax cookie; the form carries the
same nonce signed with the server's secret. A cross-site page can make a browser post the
form, but it can neither read the cookie nor forge a signature for a nonce it does not know,
so it cannot log a victim into the attacker's account ("login CSRF").
"""

from __future__ import annotations

import hmac
import secrets

from itsdangerous import BadData, URLSafeTimedSerializer

LOGIN_COOKIE = "loquent_login"
_SALT = "loquent.login-form"
_NONCE_BYTES = 24
_MAX_COOKIE_CHARS = 100


class LoginFormTokens:
    """Issue and check login-form tokens. ``secret_keys[0]`` signs, every key verifies."""

    def __init__(self, secret_keys: list[str], *, max_age_seconds: int = 2 * 3600) -> None:
        if not secret_keys:
            raise ValueError("at least one secret key is required")
        # itsdangerous signs with the last key of the list and accepts all of them.
        self._serializer = URLSafeTimedSerializer(list(reversed(secret_keys)), salt=_SALT)
        self.max_age_seconds = max_age_seconds

    def issue(self, cookie_nonce: str | None) -> tuple[str, str]:
        """(nonce for the cookie, token for the form). Reuses a sane existing nonce so that
        two open login tabs do not invalidate each other."""
        nonce = cookie_nonce if _looks_like_nonce(cookie_nonce) else None
        nonce = nonce or secrets.token_urlsafe(_NONCE_BYTES)
        return nonce, self._serializer.dumps(nonce)

    def check(self, cookie_nonce: str | None, form_token: str | None) -> bool:
        if not _looks_like_nonce(cookie_nonce) or not form_token or len(form_token) > 500:
            return False
        try:
            signed_nonce = self._serializer.loads(form_token, max_age=self.max_age_seconds)
        except BadData:
            return False
        if not isinstance(signed_nonce, str) or cookie_nonce is None:
            return False
        return hmac.compare_digest(signed_nonce, cookie_nonce)


def _looks_like_nonce(value: str | None) -> bool:
    return bool(value) and len(value or "") <= _MAX_COOKIE_CHARS and (value or "").isascii()
