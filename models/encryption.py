"""Payload encryption: what the engine hands Temporal is encrypted before it leaves the process.

Temporal keeps every payload for as long as it keeps a history (workflow inputs and results,
activity inputs and results, signals, local activity markers, summaries) and shows them to
whoever can open its Web UI. ``PayloadEncryption`` is a payload codec: it encrypts each payload
with AES-256-GCM under the keyring's current key, names the key in the payload's metadata
(``encryption-key-id``), and decrypts with whichever key a payload names. Payloads that are not
encrypted (histories written before, or by a process without keys) pass through as they are.

Keys come from ``PAYLOAD_KEYS`` (or the file ``PAYLOAD_KEYS_FILE``): ``id:base64key`` entries
separated by commas, each key 32 random bytes. The first encrypts; all of them decrypt. To rotate,
put a new key first and keep the old ones for as long as a history may hold payloads they
encrypted (the namespace's retention period after the last participant that ran with them).
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from temporalio.api.common.v1 import Payload
from temporalio.converter import PayloadCodec

ENCODING = b"binary/encrypted"
KEY_ID = "encryption-key-id"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12
_KEY_ID_FORM = re.compile(r"[A-Za-z0-9._-]{1,64}")


class PayloadKeyError(ValueError):
    """A payload cannot be decrypted: its key is not on this keyring, or it was altered."""


@dataclass(frozen=True)
class PayloadKey:
    id: str
    secret: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not _KEY_ID_FORM.fullmatch(self.id):
            raise ValueError(f"key id {self.id!r}: letters, digits, '.', '_' or '-', at most 64")
        if len(self.secret) != KEY_BYTES:
            raise ValueError(f"key {self.id!r} has {len(self.secret)} bytes, not {KEY_BYTES}")


class Keyring:
    """The keys a process encrypts (the first) and decrypts (all) payloads with."""

    def __init__(self, keys: Sequence[PayloadKey]) -> None:
        if not keys:
            raise ValueError("a keyring needs at least one key")
        ids = [key.id for key in keys]
        if len(set(ids)) != len(ids):
            raise ValueError(f"key ids must differ: {', '.join(ids)}")
        self.current = keys[0]
        self._ciphers = {key.id: AESGCM(key.secret) for key in keys}

    @property
    def ids(self) -> list[str]:
        return list(self._ciphers)

    @classmethod
    def parse(cls, text: str) -> Keyring:
        """``id:base64key,id:base64key``; whitespace and newlines around entries are ignored."""
        keys: list[PayloadKey] = []
        for entry in re.split(r"[,\s]+", text.strip()):
            if not entry:
                continue
            key_id, colon, encoded = entry.partition(":")
            if not colon:
                raise ValueError("each payload key is written id:base64key")
            try:
                secret = base64.b64decode(encoded, validate=True)
            except binascii.Error:
                raise ValueError(f"key {key_id!r} is not base64") from None
            keys.append(PayloadKey(key_id, secret))
        return cls(keys)

    @staticmethod
    def new_entry(key_id: str) -> str:
        """A fresh random key as a ``PAYLOAD_KEYS`` entry (``id:base64key``)."""
        key = PayloadKey(key_id, os.urandom(KEY_BYTES))
        return f"{key.id}:{base64.b64encode(key.secret).decode('ascii')}"

    def encrypt(self, payload: Payload) -> Payload:
        nonce = os.urandom(NONCE_BYTES)
        key_id = self.current.id
        # The key id is authenticated too: a payload cannot be passed off as another key's.
        sealed = self._ciphers[key_id].encrypt(nonce, payload.SerializeToString(), key_id.encode())
        return Payload(
            metadata={"encoding": ENCODING, KEY_ID: key_id.encode()}, data=nonce + sealed
        )

    def decrypt(self, payload: Payload) -> Payload:
        """The payload as it was before ``encrypt``; one that is not encrypted, unchanged."""
        if payload.metadata.get("encoding") != ENCODING:
            return payload
        key_id = payload.metadata.get(KEY_ID, b"").decode("utf-8", "replace")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise PayloadKeyError(
                f"payload encrypted with key {key_id!r}, which is not among this process's "
                f"payload keys ({', '.join(self.ids)})"
            )
        nonce, sealed = payload.data[:NONCE_BYTES], payload.data[NONCE_BYTES:]
        try:
            plain = cipher.decrypt(nonce, sealed, key_id.encode())
        except InvalidTag:
            raise PayloadKeyError(f"payload under key {key_id!r} does not decrypt") from None
        return Payload.FromString(plain)


class PayloadEncryption(PayloadCodec):
    """The payload codec of every client and worker that has keys, and of the codec server."""

    def __init__(self, keyring: Keyring) -> None:
        self.keyring = keyring

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.keyring.encrypt(payload) for payload in payloads]

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        return [self.keyring.decrypt(payload) for payload in payloads]
