"""Sealing ``pii_redactor``'s placeholder mapping so it never travels in clear.

The mapping (``{"[EMAIL_1]": "jane@example.com", ...}``) goes from PRE_FLIGHT to
POST_FLIGHT (and to a cache hit) in the request's ``metadata``, which the gateway
carries, logs and may forward. It is sealed with AES-256-GCM (authenticated
encryption, from the ``cryptography`` package): the metadata value is the text
``"ringd-seal-v1.<base64url(nonce | ciphertext | tag)>"``; it is bound to the
request's ``request_id`` (as associated data), so a token copied into another
request does not open.

The key (32 bytes, written as base64 or 64 hex digits) comes from, in order:
the plugin config key ``pii_key``, the environment variable ``RINGD_PII_KEY``,
or, when neither is set, a random key made once per process and kept in the
engine's shared state (``ctx.state.extra``), so every plugin of that process
uses the same one. Replicas and ``ringd serve --workers`` processes each make
their own: a mapping sealed by one cannot be opened by another, so they need a
shared ``RINGD_PII_KEY`` (the plugins warn at load when none is configured).
Make one with ``python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'``.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from ringd.plugins._common import ConfigReader
from ringd.plugins._detect import PLACEHOLDER_PATTERN
from ringd.sdk import PluginContext

KEY_ENV = "RINGD_PII_KEY"
"""The environment variable holding the sealing key shared by replicas and workers."""

CONFIG_KEY = "pii_key"
"""The plugin config key that overrides :data:`KEY_ENV`."""

MAKE_KEY = "make one with: python -c 'import base64, os; print(base64.b64encode(os.urandom(32)).decode())'"

_PREFIX = "ringd-seal-v1."
_NONCE_BYTES = 12
_STATE_KEY = "_ringd_pii_seal_key"  # ctx.state.extra slot of the per-process key
_PURPOSE = b"ringd _pii_mapping v1\x00"


class SealError(ValueError):
    """A sealed value that cannot be opened: malformed, tampered with, or sealed with another key."""


def parse_key(text: str, source: str) -> bytes:
    """The 32-byte key written in ``text`` (base64, base64url or hex); ``source`` names it on error."""
    candidate = text.strip()
    raw: bytes | None = None
    if len(candidate) == 64:
        try:
            raw = bytes.fromhex(candidate)
        except ValueError:
            raw = None
    if raw is None:
        standard = candidate.replace("-", "+").replace("_", "/")
        try:
            raw = base64.b64decode(standard + "=" * (-len(standard) % 4), validate=True)
        except (binascii.Error, ValueError):
            raw = None
    if raw is None or len(raw) != 32:
        raise ValueError(f"{source} must be a 32-byte key written as base64 or 64 hex digits ({MAKE_KEY})")
    return raw


class KeySource:
    """Where one plugin takes its sealing key from: config, environment, or the process's own."""

    __slots__ = ("_cipher", "_key", "_logger", "_plugin")

    def __init__(self, reader: ConfigReader) -> None:
        """Read ``pii_key`` from the plugin's config, else ``RINGD_PII_KEY``.

        Raises:
            ValueError: a configured key that is not 32 bytes of base64 or hex.
        """
        self._cipher: tuple[bytes, AESGCM] | None = None
        configured = reader.get_str(CONFIG_KEY, None)
        if configured is not None:
            self._key: bytes | None = parse_key(configured, f"{reader.plugin}: config {CONFIG_KEY!r}")
            return
        from_env = os.environ.get(KEY_ENV)
        if from_env:
            self._key = parse_key(from_env, f"{reader.plugin}: environment variable {KEY_ENV}")
            return
        self._key = None
        self._plugin = reader.plugin
        self._logger = logging.getLogger(f"plugin.{reader.plugin}")

    def key(self, ctx: PluginContext) -> bytes:
        """The key: the configured one, or the process's own kept in the engine's shared state."""
        if self._key is not None:
            return self._key
        extra = ctx.state.extra
        key = extra.get(_STATE_KEY)
        if not isinstance(key, bytes):
            key = extra.setdefault(_STATE_KEY, AESGCM.generate_key(bit_length=256))
            self._logger.warning(
                "%s: no %r in its config and %s is not set: PII mappings are sealed with a key "
                "made for this process only; replicas and --workers processes need one shared key in %s",
                self._plugin,
                CONFIG_KEY,
                KEY_ENV,
                KEY_ENV,
            )
        return bytes(key)

    def cipher(self, ctx: PluginContext) -> AESGCM:
        """The key as a ready cipher, made once per key (making one costs about as much as
        sealing a mapping)."""
        key = self.key(ctx)
        cached = self._cipher
        if cached is None or cached[0] != key:
            cached = self._cipher = (key, AESGCM(key))
        return cached[1]


def _associated(request_id: str) -> bytes:
    return _PURPOSE + request_id.encode("utf-8", "surrogatepass")


def _aead(key: bytes | AESGCM) -> AESGCM:
    return key if isinstance(key, AESGCM) else AESGCM(key)


def seal(mapping: Mapping[str, str], *, key: bytes | AESGCM, request_id: str) -> str:
    """``mapping`` encrypted and authenticated under ``key`` (its bytes, or
    :meth:`KeySource.cipher`), bound to ``request_id``."""
    nonce = os.urandom(_NONCE_BYTES)
    try:
        # compact UTF-8 JSON, as json's below
        plaintext = orjson.dumps(mapping if type(mapping) is dict else dict(mapping))
    except orjson.JSONEncodeError:  # a lone surrogate: json writes it, surrogatepass encodes it
        plaintext = json.dumps(dict(mapping), ensure_ascii=False, separators=(",", ":")).encode(
            "utf-8", "surrogatepass"
        )
    sealed = _aead(key).encrypt(nonce, plaintext, _associated(request_id))
    return _PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode("ascii").rstrip("=")


def is_sealed(value: Any) -> bool:
    """Whether ``value`` looks like a sealed token (it may still fail to open)."""
    return isinstance(value, str) and value.startswith(_PREFIX)


def open_sealed(token: Any, *, key: bytes | AESGCM, request_id: str) -> dict[str, str]:
    """The mapping sealed in ``token``.

    Raises:
        SealError: ``token`` is not a sealed mapping, was changed, was sealed with
            another key (another replica without a shared ``RINGD_PII_KEY``), or
            for another request_id. The message never contains the mapping.
    """
    if not is_sealed(token):
        raise SealError("the PII mapping is not a sealed token (a mapping in clear is refused)")
    encoded = token[len(_PREFIX) :]
    try:
        raw = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
    except (binascii.Error, ValueError):
        raise SealError("the sealed PII mapping is not valid base64url") from None
    if len(raw) <= _NONCE_BYTES + 16:
        raise SealError("the sealed PII mapping is too short")
    try:
        plaintext = _aead(key).decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _associated(request_id))
    except InvalidTag:
        raise SealError(
            "the sealed PII mapping does not open: it was changed, sealed for another request_id, "
            f"or sealed with another key (replicas and --workers need one shared {KEY_ENV})"
        ) from None
    try:
        mapping = orjson.loads(plaintext)
    except orjson.JSONDecodeError:  # lone surrogates (sealed through json above), or not JSON
        try:
            mapping = json.loads(plaintext)  # bytes: decoded with surrogatepass
        except ValueError:
            raise SealError("the sealed PII mapping is not JSON") from None
    if not isinstance(mapping, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
    ):
        raise SealError("the sealed PII mapping is not a mapping of strings")
    return mapping


# --------------------------------------------------------------------------- the mapping in texts


def restore_placeholders(text: str, mapping: Mapping[str, str]) -> tuple[str, int]:
    """``text`` with each placeholder of ``mapping`` replaced by its original; and how many were.

    An unknown placeholder is left as it is.
    """
    if "[" not in text:
        return text, 0
    restored = 0

    def original(match: re.Match[str]) -> str:
        nonlocal restored
        value = mapping.get(match.group(0))
        if value is None:
            return match.group(0)
        restored += 1
        return value

    return PLACEHOLDER_PATTERN.sub(original, text), restored


def originals_pattern(mapping: Mapping[str, str]) -> re.Pattern[str] | None:
    """A regex matching any original value of ``mapping``, longest first (None for an empty one)."""
    originals = sorted({value for value in mapping.values() if value}, key=len, reverse=True)
    if not originals:
        return None
    return re.compile("|".join(re.escape(value) for value in originals))


def mask_originals(text: str, mapping: Mapping[str, str], pattern: re.Pattern[str] | None) -> str:
    """``text`` with each original value of ``mapping`` put back into its placeholder.

    ``pattern`` is :func:`originals_pattern` of ``mapping``. This is how an answer
    whose PII was restored is stored: in the form the model wrote it.
    """
    if pattern is None:
        return text
    placeholders = {value: placeholder for placeholder, value in mapping.items()}
    return pattern.sub(lambda match: placeholders[match.group(0)], text)
