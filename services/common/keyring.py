"""The key-encryption keys of the credential store (:mod:`services.common.credentials`):
the current KEK of ``conf/env/`` and, during a rotation, the previous one; AES-256-GCM
with the owner and provider bound as associated data, so a sealed key moved to another
owner or provider does not open.
"""

from __future__ import annotations

import base64
import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from services.common.errors import ConfigError, CredentialError
from services.common.logging import register_secret
from services.common.secrets_env import read_generated_secret
from services.common.settings import Settings

KEK_KEY = "A0_CREDENTIALS_KEK"
PREVIOUS_KEK_KEY = "A0_CREDENTIALS_KEK_PREVIOUS"


def kek_id(kek: bytes) -> str:
    return hashlib.sha256(b"a0-kek:" + kek).hexdigest()[:16]


def _decode_kek(value: str) -> bytes:
    raw = base64.urlsafe_b64decode(value.encode())
    if len(raw) != 32:
        raise ConfigError(f"{KEK_KEY} must be 32 bytes, base64url-encoded")
    return raw


def _aad(owner_id: str, provider: str) -> bytes:
    return f"a0-credential\x00{owner_id}\x00{provider}".encode()


class Keyring:
    """The current KEK and, during a rotation, the previous one."""

    def __init__(self, settings: Settings) -> None:
        conf = settings.stack.conf_path
        current = read_generated_secret(conf, KEK_KEY)
        if not current:
            raise ConfigError(
                f"no {KEK_KEY} in {conf}", hint="run `a0ctl up` once: it generates the key-encryption key"
            )
        register_secret(current)
        self.current = _decode_kek(current)
        self.keys = {kek_id(self.current): self.current}
        previous = read_generated_secret(conf, PREVIOUS_KEK_KEY)
        if previous:
            register_secret(previous)
            old = _decode_kek(previous)
            self.keys[kek_id(old)] = old

    def encrypt(self, owner_id: str, provider: str, secret: str) -> tuple[bytes, bytes, str]:
        nonce = os.urandom(12)
        ciphertext = AESGCM(self.current).encrypt(nonce, secret.encode(), _aad(owner_id, provider))
        return nonce, ciphertext, kek_id(self.current)

    def decrypt(self, owner_id: str, provider: str, nonce: bytes, ciphertext: bytes, key_id: str) -> str:
        kek = self.keys.get(key_id)
        if kek is None:
            raise CredentialError(
                f"credential of {owner_id}/{provider} is sealed with an unknown key {key_id}"
            )
        try:
            return AESGCM(kek).decrypt(nonce, ciphertext, _aad(owner_id, provider)).decode()
        except InvalidTag:
            raise CredentialError(f"credential of {owner_id}/{provider} failed authentication") from None
