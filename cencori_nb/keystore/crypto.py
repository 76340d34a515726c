"""The cryptography of the key store: AES-256-GCM records in a key envelope.

- Every encryption uses ``cryptography``'s :class:`AESGCM` with a 32-byte key and a fresh
  12-byte nonce from ``os.urandom``; a stored nonce is never reused (a changed record is
  sealed again with a new nonce). Not Fernet: Fernet is AES-128-CBC.
- A random 256-bit data key (DEK) seals the records; a key-encryption key (KEK) wraps the
  DEK. Changing the passphrase re-wraps the DEK only.
- Associated data binds each ciphertext to where it belongs: a record to its format
  version, project and provider; the wrapped DEK to the KEK description (source, KDF
  parameters, salt); the file MAC to every other byte of the document. A ciphertext copied
  into another slot fails to open.
- Argon2id (OWASP: m=19456 KiB, t=2, p=1, 16-byte random salt) turns a passphrase into a
  KEK; its parameters are stored next to the wrapped DEK.

Everything here is pure (bytes in, bytes out) except the counters used by tests and the
benchmark to prove the KDF runs once per process.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import unicodedata
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from .secret import Secret

__all__ = [
    "FORMAT",
    "KEY_BYTES",
    "NONCE_BYTES",
    "VERSION",
    "Argon2Params",
    "InvalidTag",
    "Sealed",
    "b64d",
    "b64e",
    "canonical_json",
    "derive_kek",
    "dump_document",
    "kdf_runs",
    "kek_check",
    "mac_aad",
    "new_key",
    "open_record",
    "open_sealed",
    "record_aad",
    "seal",
    "seal_record",
    "wrap_aad",
]

FORMAT = "cencori-nb-keystore"
VERSION = 1
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # 96-bit GCM nonce, as NIST recommends
TAG_BYTES = 16
_PAD = 64  # record plaintexts are padded so ciphertext length hides key length

_kdf_runs = 0


def kdf_runs() -> int:
    """How many Argon2id derivations this process has run (tests and benchmarks read it)."""
    return _kdf_runs


# --------------------------------------------------------------------------- encoding


def canonical_json(obj: Any) -> bytes:
    """The one byte form of ``obj`` used as associated data (sorted keys, no spaces)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def dump_document(doc: dict[str, Any]) -> bytes:
    """The exact bytes of a store file. Loading re-dumps and compares, so any byte that
    is changed without changing the meaning (spaces, base64 padding bits, key order,
    duplicate keys) is still detected."""
    return (json.dumps(doc, indent=1, sort_keys=True, ensure_ascii=True) + "\n").encode()


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: Any, *, size: int | None = None, min_size: int = 0) -> bytes:
    """Strict base64: only the canonical encoding of some bytes is accepted."""
    if not isinstance(text, str):
        raise ValueError("expected base64 text")
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError("invalid base64") from None
    if b64e(data) != text:
        raise ValueError("non-canonical base64")
    if size is not None and len(data) != size:
        raise ValueError(f"expected {size} bytes, found {len(data)}")
    if len(data) < min_size:
        raise ValueError(f"expected at least {min_size} bytes")
    return data


# --------------------------------------------------------------------------- AES-GCM


@dataclass(frozen=True, slots=True)
class Sealed:
    """A nonce and the AES-GCM ciphertext (tag appended) it produced."""

    nonce: bytes
    ciphertext: bytes

    def to_json(self) -> dict[str, str]:
        return {"nonce": b64e(self.nonce), "ciphertext": b64e(self.ciphertext)}

    @classmethod
    def from_json(cls, obj: Any) -> Sealed:
        if not isinstance(obj, dict):
            raise ValueError("expected an object with nonce and ciphertext")
        return cls(
            b64d(obj.get("nonce"), size=NONCE_BYTES),
            b64d(obj.get("ciphertext"), min_size=TAG_BYTES),
        )


def new_key() -> bytes:
    """A fresh random 256-bit key."""
    return AESGCM.generate_key(bit_length=KEY_BYTES * 8)


def seal(key: bytes, plaintext: bytes, aad: bytes) -> Sealed:
    """Encrypt with AES-256-GCM under a fresh random nonce."""
    if len(key) != KEY_BYTES:
        raise ValueError("AES-256 needs a 32-byte key")
    nonce = os.urandom(NONCE_BYTES)
    return Sealed(nonce, AESGCM(key).encrypt(nonce, plaintext, aad))


def open_sealed(key: bytes, sealed: Sealed, aad: bytes) -> bytes:
    """Decrypt; raises :class:`InvalidTag` if key, nonce, ciphertext or ``aad`` differ."""
    return AESGCM(key).decrypt(sealed.nonce, sealed.ciphertext, aad)


# --------------------------------------------------------------------------- what is bound to what


def record_aad(project: str, provider: str) -> bytes:
    """Associated data of one record: it opens only in its own (project, provider) slot."""
    return canonical_json(
        {
            "format": FORMAT,
            "version": VERSION,
            "purpose": "record",
            "project": project,
            "provider": provider,
        }
    )


def wrap_aad(kek_header: dict[str, Any]) -> bytes:
    """Associated data of the wrapped DEK: the KEK description (source, KDF, salt, check)."""
    return canonical_json(
        {"format": FORMAT, "version": VERSION, "purpose": "dek", "kek": kek_header}
    )


def mac_aad(body: dict[str, Any]) -> bytes:
    """Associated data of the file MAC: the whole document except the MAC itself, so no
    record can be dropped, duplicated or rolled back alone, and the generation counter is
    authenticated."""
    return canonical_json({"purpose": "mac", "document": body})


def seal_record(dek: bytes, project: str, provider: str, fields: dict[str, Any]) -> Sealed:
    """Seal a record's fields (JSON, space-padded to a multiple of 64 bytes)."""
    plain = canonical_json(fields)
    plain += b" " * (-len(plain) % _PAD)
    return seal(dek, plain, record_aad(project, provider))


def open_record(dek: bytes, project: str, provider: str, sealed: Sealed) -> dict[str, Any]:
    """Open a record; :class:`InvalidTag` if it was moved, altered or sealed by another key."""
    plain = open_sealed(dek, sealed, record_aad(project, provider))
    fields = json.loads(plain)
    if not isinstance(fields, dict):
        raise ValueError("record is not an object")
    return fields


# --------------------------------------------------------------------------- KEK helpers


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """Argon2id parameters as stored in the file (``memory_cost`` in KiB)."""

    salt: bytes
    memory_cost: int = 19456
    iterations: int = 2
    lanes: int = 1
    length: int = KEY_BYTES

    @classmethod
    def fresh(cls) -> Argon2Params:
        return cls(salt=os.urandom(16))

    def to_json(self) -> dict[str, Any]:
        return {
            "name": "argon2id",
            "salt": b64e(self.salt),
            "memory_cost": self.memory_cost,
            "iterations": self.iterations,
            "lanes": self.lanes,
            "length": self.length,
        }

    @classmethod
    def from_json(cls, obj: Any) -> Argon2Params:
        """Parse and bound-check (a damaged file must not ask for 100 GiB of memory)."""
        if not isinstance(obj, dict) or obj.get("name") != "argon2id":
            raise ValueError("unknown key derivation")
        if set(obj) != {"name", "salt", "memory_cost", "iterations", "lanes", "length"}:
            raise ValueError("unexpected key derivation fields")
        ints = [obj[k] for k in ("memory_cost", "iterations", "lanes", "length")]
        if any(type(v) is not int for v in ints):
            raise ValueError("key derivation parameters must be integers")
        params = cls(
            salt=b64d(obj["salt"], min_size=16),
            memory_cost=obj["memory_cost"],
            iterations=obj["iterations"],
            lanes=obj["lanes"],
            length=obj["length"],
        )
        if not (
            1 <= params.lanes <= 16
            and 1 <= params.iterations <= 16
            and 8 * params.lanes <= params.memory_cost <= 1024 * 1024
            and params.length == KEY_BYTES
            and len(params.salt) <= 64
        ):
            raise ValueError("key derivation parameters out of range")
        return params


def derive_kek(passphrase: str | Secret, params: Argon2Params) -> bytes:
    """Argon2id(passphrase) → 32-byte KEK. The passphrase is NFC-normalised UTF-8, so the
    same text typed on another keyboard layout gives the same key. It travels as a
    :class:`Secret` up to here, so no frame of a traceback shows it."""
    global _kdf_runs
    from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

    _kdf_runs += 1
    clear = passphrase.reveal() if isinstance(passphrase, Secret) else passphrase
    secret = unicodedata.normalize("NFC", clear).encode("utf-8")
    return Argon2id(
        salt=params.salt,
        length=params.length,
        iterations=params.iterations,
        lanes=params.lanes,
        memory_cost=params.memory_cost,
    ).derive(secret)


def kek_check(kek: bytes) -> bytes:
    """A 16-byte check value of a KEK, stored in the file. It tells "wrong passphrase" (the
    check differs) from "damaged wrapped key" (the check matches, the unwrap fails). It is
    no better an oracle than the wrapped DEK itself: both cost one Argon2id per guess."""
    return hmac.new(kek, b"cencori-nb keystore kek-check v1", hashlib.sha256).digest()[:16]
