"""Credentials at rest: Fernet with key rotation (MultiFernet).

Keys are derived from LOQUENT_SECRET_KEY entries (comma-separated). The first key encrypts,
every key decrypts, so rotating means prepending a new key and re-encrypting at leisure.
"""

from __future__ import annotations

import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken, MultiFernet


class SecretBox:
    def __init__(self, secret_keys: list[str]) -> None:
        if not secret_keys:
            raise ValueError("at least one secret key is required")
        self._fernet = MultiFernet([Fernet(_derive_key(k)) for k in secret_keys])

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str) -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken as exc:  # wrong key: never echo the ciphertext
            raise ValueError(
                "stored credential cannot be decrypted with the configured keys"
            ) from exc


def _derive_key(secret: str) -> bytes:
    # Domain-separated so the same secret can sign cookies without sharing key material.
    digest = hashlib.sha256(b"loquent-credentials:" + secret.encode()).digest()
    return base64.urlsafe_b64encode(digest)


def token_digest(token: str) -> str:
    """API tokens and session ids are long random strings: a plain SHA-256 is enough."""
    return hashlib.sha256(token.encode()).hexdigest()
