"""Encryption at rest for seller credentials: Fernet, with rotation through MultiFernet.

``DISCOVERY_ENCRYPTION_KEY`` holds one or more keys, comma-separated; the first encrypts, all
of them decrypt. To rotate: put a new key first, run ``discoveryctl keys rotate``, then drop
the old one.
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from discoveryctl.errors import ConfigurationError, EncryptionKeyError

KEY_HINT = "make one with `discoveryctl secrets generate-key`"


def generate_key() -> str:
    return Fernet.generate_key().decode()


class Vault:
    """Encrypts and decrypts credential strings with the configured keys."""

    def __init__(self, keys: list[str], source: str = "DISCOVERY_ENCRYPTION_KEY") -> None:
        fernets = []
        for position, key in enumerate(keys, start=1):
            try:
                fernets.append(Fernet(key.encode()))
            except (ValueError, TypeError):
                raise ConfigurationError(
                    f"{source} key #{position} is malformed: a key is 32 url-safe "
                    f"base64-encoded bytes ({KEY_HINT})"
                ) from None
        self._fernet = MultiFernet(fernets)
        self.source = source

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, ciphertext: str, what: str = "a stored credential") -> str:
        try:
            return self._fernet.decrypt(ciphertext.encode()).decode()
        except InvalidToken:
            raise EncryptionKeyError(
                f"{what} cannot be decrypted with {self.source}: wrong key? "
                "(while rotating, list the new key first and the old one after it, "
                "comma-separated)"
            ) from None

    def rotate(self, ciphertext: str, what: str = "a stored credential") -> str:
        """Re-encrypt with the current (first) key."""
        return self.encrypt(self.decrypt(ciphertext, what))
