"""POST_FLIGHT ``response_sanitizer``: clean the upstream answer before the client sees it.

Works on ``ctx.response`` in the OpenAI chat completion shape: every
``choices[].message.content`` (a string or text content parts) and
``choices[].text`` (completions). It edits the answer in place, in this order:

1. Canary: if the answer contains the configured system-prompt canary, the
   system prompt has leaked. With ``block_on_canary`` the answer is replaced by
   a 502 ``canary_leak`` block; otherwise every occurrence is removed.
2. PII and secrets (the detectors of ``pii_redactor``): with ``block_on_pii``
   a finding blocks with 502 ``pii_in_response``; otherwise each is replaced
   by ``[REDACTED_<KIND>]``, e.g. ``[REDACTED_SECRET]``.
3. With ``restore_pii``, the placeholders ``pii_redactor`` put in the prompt
   (``[EMAIL_1]``...) are replaced by the originals from metadata
   ``_pii_mapping`` (sealed by ``pii_redactor``; a mapping that does not open,
   or one in clear, restores nothing and is reported in ``restore_error``).
   Restoring comes after redaction, so the client's own data put back is not
   redacted again; an unknown placeholder is left as it is.

The answer's texts are scanned in chunks that yield to the event loop, at most
``max_scan_chars`` characters of them.

Streamed answers: ``on_chunk`` does the same three steps on the text as it
streams, with a look-ahead of ``stream_holdback_chars`` characters, so a secret,
canary or placeholder split across chunks is still caught (one longer than the
window is caught only in part). A finding in the last word of the text seen so
far waits for the next chunk, as it may go on. In a stream, a value equal to an
original that ``restore_pii`` put back is not redacted (the plugin sees its own
output again); the unary answer redacts such a value when the upstream wrote it.

Config:
    types (list[str], default all kinds: secret, email, credit_card, iban,
        ip_address, phone): kinds to redact (or block on); ``[]`` turns it off.
    block_on_pii (bool, default false): block instead of redacting.
    restore_pii (bool, default false): put back ``pii_redactor``'s originals.
    canary (str | None, default None): the canary string planted in the
        system prompt.
    block_on_canary (bool, default false): block instead of removing the canary.
    pii_key (str | None, default None): the key that opens ``_pii_mapping``; as
        ``pii_redactor``'s (``RINGD_PII_KEY`` when unset).
    max_scan_chars (int, default 1048576): the most characters of answer text
        scanned for PII.
    oversize (str, default ``"block"``): an answer with more text: ``"block"``
        withholds it with 502 ``response_too_large``; ``"scan_prefix"`` redacts
        the first ``max_scan_chars`` characters only and reports
        ``"truncated": true``.
    stream_holdback_chars (int, default 128): the streaming look-ahead window.

Metadata written:
    ``_response_sanitizer`` (dict): ``{"redacted": {kind: count},
        "restored": <placeholders replaced>, "canary_found": bool}``, plus
        ``"truncated": true`` and ``"restore_error": <why>`` when they apply.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from ringd.plugins._common import ConfigReader, iter_response_texts, map_response_texts
from ringd.plugins._detect import (
    DEFAULT_MAX_SCAN_CHARS,
    KINDS,
    Detector,
    Finding,
    find_all_yielding,
    scan_prefix,
    substitute,
    substitute_yielding,
)
from ringd.plugins._seal import CONFIG_KEY, KeySource, SealError, open_sealed, restore_placeholders
from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse, StreamText

_log = logging.getLogger("plugin.response_sanitizer")


_NO_MAPPING: dict[str, str] = {}
"""A stream without a mapping to restore from (shared: never written to)."""


def _redaction(finding: Finding) -> str:
    return f"[REDACTED_{finding.kind.upper()}]"


class ResponseSanitizer(BasePlugin):
    """Removes canary leaks and redacts PII/secrets in the answer; restores masked PII."""

    name: ClassVar[str] = "response_sanitizer"
    hook: ClassVar[PluginHook] = PluginHook.POST_FLIGHT
    version: ClassVar[str] = "1.0.0"
    author: ClassVar[str] = "ringd"
    description: ClassVar[str] = "Redacts secrets and PII in answers, restores masked PII"
    timeout_ms: ClassVar[int] = 50

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        """Read and validate the config (see the module docstring)."""
        super().__init__(config)
        reader = ConfigReader(self.name, self.config)
        reader.reject_unknown(
            {
                "types",
                "block_on_pii",
                "restore_pii",
                "canary",
                "block_on_canary",
                CONFIG_KEY,
                "max_scan_chars",
                "oversize",
                "stream_holdback_chars",
            }
        )
        types = reader.get_str_list("types", list(KINDS))
        types = [] if types is None else types
        unknown = [t for t in types if t not in KINDS]
        if unknown:
            raise reader.error("types", "a list drawn from " + ", ".join(KINDS), unknown[0])
        self.detector = Detector(types)
        self.block_on_pii = reader.get_bool("block_on_pii", False)
        self.restore_pii = reader.get_bool("restore_pii", False)
        self.canary = reader.get_str("canary", None)
        self.block_on_canary = reader.get_bool("block_on_canary", False)
        if self.block_on_canary and self.canary is None:
            raise reader.error("canary", "set when block_on_canary is true", None)
        self.max_scan_chars = (
            reader.get_int("max_scan_chars", DEFAULT_MAX_SCAN_CHARS) or DEFAULT_MAX_SCAN_CHARS
        )
        self.oversize = reader.get_choice("oversize", "block", ("block", "scan_prefix"))
        self.keys = KeySource(reader) if self.restore_pii else None
        self.stream_holdback_chars = reader.get_int("stream_holdback_chars", 128) or 128
        self._opened: dict[tuple[str, str], dict[str, str]] = {}  # a stream's mapping, opened once

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        """Sanitize ``ctx.response`` in place, or block it."""
        response = ctx.response
        report: dict[str, Any] = {"redacted": {}, "restored": 0, "canary_found": False}
        ctx.metadata["_response_sanitizer"] = report
        if not isinstance(response, dict):
            return PluginResponse.passthrough()

        if self.canary is not None:
            found = any(self.canary in text for text in iter_response_texts(response))
            report["canary_found"] = found
            if found and self.block_on_canary:
                return PluginResponse.block(
                    status_code=502,
                    error_type="canary_leak",
                    message="the upstream answer was withheld: it disclosed protected instructions",
                )
            if found:
                canary = self.canary
                map_response_texts(response, lambda text: text.replace(canary, ""))

        if self.detector.kinds:
            counts: dict[str, int] = report["redacted"]
            texts = list(iter_response_texts(response))
            total = sum(map(len, texts))
            scanned = texts
            if total > self.max_scan_chars:
                if self.oversize == "block":
                    return PluginResponse.block(
                        status_code=502,
                        error_type="response_too_large",
                        message=f"the upstream answer was withheld: it has {total} characters of text; "
                        f"{self.name} scans at most {self.max_scan_chars} (config max_scan_chars)",
                    )
                scanned = scan_prefix(texts, self.max_scan_chars)
                report["truncated"] = True
            per_text = await find_all_yielding(self.detector, scanned)
            for findings in per_text:
                for finding in findings:
                    counts[finding.kind] = counts.get(finding.kind, 0) + 1
            if self.block_on_pii and counts:
                found_kinds = ", ".join(sorted(counts))
                return PluginResponse.block(
                    status_code=502,
                    error_type="pii_in_response",
                    message=f"the upstream answer was withheld: it contains {found_kinds}",
                )
            if counts:
                redacted = [
                    await substitute_yielding(text, findings, _redaction)
                    for text, findings in zip(texts, per_text, strict=True)
                ]
                pending = iter(zip(texts, redacted, strict=True))

                def redact(text: str) -> str:
                    # map_response_texts visits the texts in iter_response_texts' order.
                    expected, new_text = next(pending)
                    if expected is not text:
                        raise RuntimeError(f"{self.name}: answer texts visited out of order")
                    return new_text

                map_response_texts(response, redact)

        sealed = ctx.metadata.get("_pii_mapping")
        if self.keys is not None and sealed is not None:
            try:
                mapping = open_sealed(sealed, key=self.keys.cipher(ctx), request_id=ctx.request_id)
            except SealError as exc:
                # The answer goes on with its placeholders; the reason is reported (never the data).
                report["restore_error"] = str(exc)
                _log.warning("%s: cannot restore PII: %s", self.name, exc)
                return PluginResponse.passthrough()

            def restore(text: str) -> str:
                new_text, restored = restore_placeholders(text, mapping)
                report["restored"] += restored
                return new_text

            map_response_texts(response, restore)
        return PluginResponse.passthrough()

    def _stream_mapping(self, ctx: PluginContext, report: dict[str, Any]) -> dict[str, str]:
        """The request's PII mapping, opened once per stream (on_chunk runs per chunk)."""
        if self.keys is None:
            return _NO_MAPPING
        sealed = ctx.metadata.get("_pii_mapping")
        if not isinstance(sealed, str):
            return _NO_MAPPING
        cache_key = (ctx.request_id, sealed)
        mapping = self._opened.get(cache_key)
        if mapping is None:
            try:
                mapping = open_sealed(sealed, key=self.keys.key(ctx), request_id=ctx.request_id)
            except SealError as exc:
                report["restore_error"] = str(exc)
                mapping = {}
            if len(self._opened) >= 1024:  # bounded: streams in flight at once, not all ever
                self._opened.clear()
            self._opened[cache_key] = mapping
        return mapping

    async def on_chunk(self, ctx: PluginContext, text: StreamText) -> str | PluginResponse:
        """The same steps on streamed text: canary, redaction, restore (see the module docstring)."""
        report = ctx.metadata.get("_response_sanitizer")
        if not isinstance(report, dict):
            report = ctx.metadata["_response_sanitizer"] = {
                "redacted": {},
                "restored": 0,
                "canary_found": False,
            }
        final = getattr(text, "final", True)
        out = str(text)
        if self.canary is not None and self.canary in out:
            report["canary_found"] = True
            if self.block_on_canary:
                return PluginResponse.block(
                    status_code=502,
                    error_type="canary_leak",
                    message="the upstream answer was withheld: it disclosed protected instructions",
                )
            out = out.replace(self.canary, "")
        mapping = self._stream_mapping(ctx, report)
        if final:
            self._opened.pop((ctx.request_id, str(ctx.metadata.get("_pii_mapping"))), None)
        found = self.detector.find(out) if self.detector.kinds else None
        if found:  # (most chunks find nothing: no more work for them)
            restored = set(mapping.values())
            # Unless final, a finding in the last word may go on in the next chunk: it waits.
            last_word = -1 if final else max(out.rfind(" "), out.rfind("\n"), out.rfind("\t"))
            findings = [
                finding
                for finding in found
                if (final or finding.end <= last_word) and finding.value not in restored
            ]
            counts: dict[str, int] = report["redacted"]
            for finding in findings:
                counts[finding.kind] = counts.get(finding.kind, 0) + 1
            if findings and self.block_on_pii:
                found_kinds = ", ".join(sorted(counts))
                return PluginResponse.block(
                    status_code=502,
                    error_type="pii_in_response",
                    message=f"the upstream answer was withheld: it contains {found_kinds}",
                )
            out = substitute(out, findings, _redaction)
        if mapping:
            out, count = restore_placeholders(out, mapping)
            report["restored"] += count
        return out
