"""PRE_FLIGHT ``pii_redactor``: mask or reject personal data and secrets in the prompt.

Scans the text of every message (string content and the ``text`` parts of OpenAI
multimodal content; image and audio parts are left alone) and the legacy
``prompt`` field for the kinds of ``ringd.plugins._detect``: ``secret``, ``email``,
``credit_card`` (Luhn-checked), ``iban`` (mod-97 checked), ``ip_address`` (IPv4
and IPv6) and ``phone``.

In ``mask`` mode each value is replaced by a placeholder such as ``[EMAIL_1]``;
the same value gets the same placeholder everywhere in the request, so the model
still sees that two mentions are one person. Placeholder numbers already present
in the prompt are skipped, so a placeholder never stands for two things.

Config:
    mode (str, default ``"mask"``): ``"mask"`` rewrites the body (MODIFY);
        ``"block"`` rejects the request with 400 ``pii_detected``.
    types (list[str], default all six kinds): which kinds to look for.
    roles (list[str] | None, default None): only messages with these roles are
        scanned; None scans every message.
    restore (bool, default false): keep the placeholder-to-original mapping in
        metadata, sealed, so ``response_sanitizer`` (``restore_pii: true``) and a
        ``response_cache`` hit can put the originals back into the answer. Only
        meaningful with ``mode: mask``.
    pii_key (str | None, default None): the 32-byte key (base64 or hex) that
        seals the mapping; else the environment variable ``RINGD_PII_KEY``; else
        a key made for this process (a warning at load: replicas and
        ``--workers`` need a shared key). See ``ringd.plugins._seal``.
    max_scan_chars (int, default 1048576): the most characters of message text
        scanned per request. Scanning yields to the event loop every 16 Ki
        characters, so the plugin's timeout applies to long texts too.
    oversize (str, default ``"block"``): what happens to a request with more
        text than ``max_scan_chars``: ``"block"`` rejects it with 413
        ``prompt_too_large`` (nothing unscanned reaches the model);
        ``"scan_prefix"`` masks what is in the first ``max_scan_chars``
        characters, passes the rest on unscanned and sets metadata
        ``pii_scan_truncated: true``.

Metadata written:
    ``pii_counts`` (dict[str, int]): occurrences found per kind, only kinds
        found; ``{}`` when the prompt is clean.
    ``_pii_mapping`` (str): the placeholder-to-original mapping, sealed with
        AES-256-GCM and bound to the request's ``request_id``
        (``"ringd-seal-v1.…"``); written only with ``restore: true`` when
        something was masked. The personal data never travels in clear.
    ``pii_scan_truncated`` (bool): ``true`` when ``oversize: scan_prefix`` left
        text unscanned; absent otherwise.
"""

from __future__ import annotations

import asyncio
from collections import deque
from itertools import chain, compress, filterfalse
from operator import itemgetter, methodcaller
from typing import Any, ClassVar

from ringd.plugins import _detect
from ringd.plugins._common import ConfigReader, iter_message_texts, map_message_texts, prompt_too_large
from ringd.plugins._detect import (
    DEFAULT_MAX_SCAN_CHARS,
    IDENTITY,
    KINDS,
    PLACEHOLDERS,
    Detector,
    Finding,
    find_all_yielding,
    placeholder_for,
    replaced,
    replaced_yielding,
    scan_prefix,
)
from ringd.plugins._seal import CONFIG_KEY, KeySource, seal
from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse

_MASK_CHUNK = 8192  # findings given placeholders between two yields to the event loop
_KIND, _VALUE = itemgetter(0), itemgetter(3)
_FEW = 32  # fewer findings are given placeholders one by one: the maps cost more
_PREFIXES = {kind: placeholder_for(kind, 0)[:-2] for kind in KINDS}  # "[EMAIL_", ...
_FORMATS = {kind: (prefix + "{}]").format for kind, prefix in _PREFIXES.items()}  # number -> placeholder
_CACHED_NUMBERS = 1 << 16  # per kind, the placeholders numbered up to this are made once per process
_MADE: dict[str, list[str]] = {kind: [] for kind in KINDS}  # per kind: placeholders 1, 2, ... made so far


def _placeholders(kind: str, first: int, count: int) -> list[str]:
    """The placeholders of ``kind`` numbered ``first`` to ``first + count - 1``.

    Those up to :data:`_CACHED_NUMBERS` are made once per process and kept (a slice of
    a kept list costs a fiftieth of formatting tens of thousands of strings again).
    """
    last = first + count - 1
    made = _MADE[kind]
    if len(made) < min(last, _CACHED_NUMBERS):
        made += map(_FORMATS[kind], range(len(made) + 1, min(last, _CACHED_NUMBERS) + 1))
    if last <= len(made):
        return made[first - 1 : last]
    return made[first - 1 :] + list(map(_FORMATS[kind], range(max(first, len(made) + 1), last + 1)))


def _present(kinds: list[str]) -> list[str]:
    """The kinds in ``kinds``, in order of first appearance."""
    if kinds and kinds.count(kinds[0]) == len(kinds):  # one kind, the usual case (a C-level scan)
        return kinds[:1]
    return list(dict.fromkeys(kinds))


def _counted(findings: list[Finding]) -> dict[str, int]:
    """How many of ``findings`` are of each kind, the kinds in order of first appearance."""
    if len(findings) < _FEW:  # a loop over a few costs less than the maps
        counts: dict[str, int] = {}
        for kind, _, _, _ in findings:
            counts[kind] = counts.get(kind, 0) + 1
        return counts
    kinds = list(map(_KIND, findings))
    return {kind: kinds.count(kind) for kind in _present(kinds)}


class _Masker:
    """Assigns placeholders for one request: one per distinct value, numbered per kind.

    Works on many findings at once with C-level maps (a megabyte of addresses holds
    tens of thousands): per kind, the values' identities, the new ones in order of
    first appearance, numbers for those, and each finding's placeholder.
    """

    __slots__ = ("by_identity", "mapping", "next_number", "skipped", "taken")

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken
        self.by_identity: dict[str, dict[str, str]] = {}  # per kind: identity -> placeholder
        self.next_number: dict[str, int] = {}
        self.mapping: dict[str, str] = {}
        self.skipped: dict[str, int] = {}  # per kind: how many of taken are its placeholders

    def assign(self, findings: list[Finding]) -> list[str]:
        """The placeholder of each of ``findings``, taken in order (texts, then positions)."""
        if len(findings) < _FEW:
            return [self._one(kind, value) for kind, _, _, value in findings]
        kinds = list(map(_KIND, findings))
        values = list(map(_VALUE, findings))
        present = _present(kinds)
        if len(present) == 1:  # the usual case: this kind's values are all of them
            return self._of_kind(present[0], values)
        # Per kind in order of first appearance, then back in the findings' order: each
        # finding takes the next placeholder of its kind.
        pending = {
            kind: iter(self._of_kind(kind, list(compress(values, map(kind.__eq__, kinds)))))
            for kind in present
        }
        return list(map(next, map(pending.__getitem__, kinds)))

    def _of_kind(self, kind: str, values: list[str]) -> list[str]:
        """The placeholders of ``values``, all of ``kind``, in order."""
        known = self.by_identity.setdefault(kind, {})
        if _detect.NATIVE is not None:  # as below, in one pass in C: each new identity takes the next free
            free = self._free(kind, len(values))
            names, used = _detect.NATIVE.assign(values, IDENTITY[kind], known, self.mapping, free)
            if used:
                self._took(kind, free[used - 1])
            return names
        identities = list(map(IDENTITY[kind], values))
        first_seen = dict.fromkeys(identities)  # in order of first appearance
        new = list(filterfalse(known.__contains__, first_seen)) if known else first_seen
        if new:
            known.update(zip(new, self._numbered(kind, len(new)), strict=True))
        names = list(map(known.__getitem__, identities))
        deque(map(self.mapping.setdefault, names, values), maxlen=0)  # the first value of each
        return names

    def _one(self, kind: str, value: str) -> str:
        known = self.by_identity.get(kind)
        if known is None:
            known = self.by_identity[kind] = {}
        identity = IDENTITY[kind](value)
        placeholder = known.get(identity)
        if placeholder is None:
            if self.taken:
                placeholder = self._numbered(kind, 1)[0]
            else:
                number = self.next_number[kind] = self.next_number.get(kind, 0) + 1
                placeholder = _FORMATS[kind](number)
            known[identity] = placeholder
            self.mapping[placeholder] = value
        return placeholder

    def _numbered(self, kind: str, count: int) -> list[str]:
        """``count`` new placeholders for ``kind``, skipping those already in the prompt."""
        names = self._free(kind, count)
        self._took(kind, names[-1])
        return names

    def _free(self, kind: str, count: int) -> list[str]:
        """The next ``count`` placeholders for ``kind`` not in the prompt, in order (none
        taken until :meth:`_took` says how far)."""
        number = self.next_number.get(kind, 0)
        skipped = self.skipped.get(kind)
        if skipped is None:
            skipped = self.skipped[kind] = sum(map(methodcaller("startswith", _PREFIXES[kind]), self.taken))
        if not skipped:
            return _placeholders(kind, number + 1, count)
        # At most ``skipped`` of the next ``count + skipped`` numbers are taken.
        candidates = _placeholders(kind, number + 1, count + skipped)
        return list(filterfalse(self.taken.__contains__, candidates))[:count]

    def _took(self, kind: str, last: str) -> None:
        """The placeholders of ``kind`` up to ``last`` (one of :meth:`_free`'s) are used."""
        self.next_number[kind] = int(last[len(_PREFIXES[kind]) : -1])


class PiiRedactor(BasePlugin):
    """Masks (or blocks on) emails, phones, cards, IBANs, IPs and secrets in the prompt."""

    name: ClassVar[str] = "pii_redactor"
    hook: ClassVar[PluginHook] = PluginHook.PRE_FLIGHT
    version: ClassVar[str] = "1.0.0"
    author: ClassVar[str] = "ringd"
    description: ClassVar[str] = "Masks or blocks PII and secrets in the prompt"
    timeout_ms: ClassVar[int] = 50

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        """Read and validate the config (see the module docstring)."""
        super().__init__(config)
        reader = ConfigReader(self.name, self.config)
        reader.reject_unknown({"mode", "types", "roles", "restore", CONFIG_KEY, "max_scan_chars", "oversize"})
        self.mode = reader.get_choice("mode", "mask", ("mask", "block"))
        types = reader.get_str_list("types", list(KINDS)) or []
        unknown = [t for t in types if t not in KINDS]
        if unknown:
            raise reader.error("types", "a list drawn from " + ", ".join(KINDS), unknown[0])
        roles = reader.get_str_list("roles", None)
        self.roles = frozenset(roles) if roles is not None else None
        self.restore = reader.get_bool("restore", False)
        self.max_scan_chars = (
            reader.get_int("max_scan_chars", DEFAULT_MAX_SCAN_CHARS) or DEFAULT_MAX_SCAN_CHARS
        )
        self.oversize = reader.get_choice("oversize", "block", ("block", "scan_prefix"))
        self.detector = Detector(types)
        self.keys = KeySource(reader) if self.restore and self.mode == "mask" else None

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        """Scan the prompt; mask, block or pass it on, and count what was found."""
        body = ctx.body
        texts = [text for _, text in iter_message_texts(body, self.roles)]
        total = sum(map(len, texts))
        scanned = texts
        if total > self.max_scan_chars:
            if self.oversize == "block":
                return prompt_too_large(self.name, total, self.max_scan_chars)
            scanned = scan_prefix(texts, self.max_scan_chars)
            ctx.metadata["pii_scan_truncated"] = True
        found = await find_all_yielding(self.detector, scanned)
        flat = list(chain.from_iterable(found))
        counts = _counted(flat)
        ctx.metadata["pii_counts"] = counts
        if not counts:
            return PluginResponse.passthrough()
        if self.mode == "block":
            listed = ", ".join(f"{kind} ({count})" for kind, count in counts.items())
            return PluginResponse.block(
                status_code=400,
                error_type="pii_detected",
                message=f"the request contains personal data or secrets: {listed}",
            )

        taken: set[str] = set()
        for text in texts:
            if "[" in text:
                taken.update(PLACEHOLDERS.findall(text))
        masker = _Masker(taken)
        if len(flat) <= _MASK_CHUNK:
            placeholders = masker.assign(flat)
        else:
            placeholders = []
            for low in range(0, len(flat), _MASK_CHUNK):
                placeholders += masker.assign(flat[low : low + _MASK_CHUNK])
                await asyncio.sleep(0)
        masked_texts = list(texts)
        low = 0
        for index, findings in enumerate(found):
            if not findings:
                continue
            high = low + len(findings)
            if high - low <= _MASK_CHUNK:
                masked_texts[index] = replaced(texts[index], findings, placeholders[low:high])
            else:
                masked_texts[index] = await replaced_yielding(
                    texts[index], findings, placeholders[low:high], _MASK_CHUNK
                )
            low = high
        pending = iter(zip(texts, masked_texts, strict=True))

        def mask(text: str, _role: str) -> str:
            # map_message_texts visits the texts in iter_message_texts' order.
            expected, masked = next(pending)
            if expected is not text:
                raise RuntimeError(f"{self.name}: message texts visited out of order")
            return masked

        new_body = map_message_texts(body, mask, self.roles)
        if new_body is None:  # only when every finding was masked by itself: impossible
            return PluginResponse.passthrough()
        if self.keys is not None:
            ctx.metadata["_pii_mapping"] = seal(
                masker.mapping, key=self.keys.cipher(ctx), request_id=ctx.request_id
            )
        return PluginResponse.modify(body=new_body, message=f"masked {len(flat)} value(s)")
