"""A webhook request's signature: Ed25519 by the account's public key over
``"{telnyx-timestamp}|{raw body}"``, within :data:`TOLERANCE_S` of now."""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from bulk_mms.errors import ConfigError

PUBLIC_KEY_ENV = "TELNYX_PUBLIC_KEY"
SIGNATURE_HEADER = "telnyx-signature-ed25519"
TIMESTAMP_HEADER = "telnyx-timestamp"
#: How far a request's timestamp may be from now, in seconds (Telnyx's documented tolerance).
TOLERANCE_S = 300


def load_public_key(value: str | None) -> Ed25519PublicKey:
    """The account's Ed25519 public key from ``TELNYX_PUBLIC_KEY`` (base64, or PEM).

    Raises:
        ConfigError: missing, or not an Ed25519 public key.
    """
    if not value or not value.strip():
        raise ConfigError(PUBLIC_KEY_ENV, "is not set: export the public key from the portal")
    text = value.strip()
    bad = ConfigError(PUBLIC_KEY_ENV, "is not an Ed25519 public key (base64 of 32 bytes, or PEM)")
    try:
        if text.startswith("-----BEGIN"):
            key = load_pem_public_key(text.encode())
        else:
            key = Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, TypeError):
        raise bad from None
    if not isinstance(key, Ed25519PublicKey):
        raise bad
    return key


class Unverified(Exception):
    """Why a request fails :func:`verify`, and the status it gets: 400 for a header that is
    malformed, 401 for one that is well formed but missing, stale or not by the key."""

    def __init__(self, reason: str, status: int) -> None:
        self.reason = reason
        self.status = status
        super().__init__(reason)


#: A timestamp is Unix seconds: digits only, and no more than 12 of them (the year 33658). A
#: longer one would only be a way to make the arithmetic below overflow.
_STAMP = re.compile(r"[0-9]{1,12}")  # whole (fullmatch), as _SIGNATURE
#: An Ed25519 signature is 64 bytes: 88 characters of base64.
_SIGNATURE = re.compile(r"[A-Za-z0-9+/]{86}==")


def verify(key: Ed25519PublicKey, headers: Mapping[str, str], raw: bytes, now: float) -> None:
    """Check a request's signature and age.

    Raises:
        Unverified: the reason it fails, with its status (400 or 401).
    """
    signature, stamp = headers.get(SIGNATURE_HEADER), headers.get(TIMESTAMP_HEADER)
    if not signature or not stamp:
        raise Unverified("missing signature headers", 401)
    if not _STAMP.fullmatch(stamp):
        raise Unverified("malformed timestamp", 400)
    if not _SIGNATURE.fullmatch(signature):
        raise Unverified("malformed signature", 400)
    age = abs(now - int(stamp))
    if age > TOLERANCE_S:
        raise Unverified(f"timestamp {age:.0f} s away from now (tolerance {TOLERANCE_S} s)", 401)
    try:
        key.verify(base64.b64decode(signature, validate=True), stamp.encode() + b"|" + raw)
    except (InvalidSignature, binascii.Error, ValueError):
        raise Unverified("signature does not verify", 401) from None
