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
   ``_pii_mapping``. Restoring comes after redaction, so the client's own data
   put back is not redacted again; an unknown placeholder is left as it is.

Streamed answers: ``on_chunk`` does the same three steps on the text as it
streams, with a look-ahead of ``stream_holdback_chars`` characters, so a secret,
canary or placeholder split across chunks is still caught (one longer than the
window is caught only in part). A finding in the last word of the text seen so
far waits for the next chunk, as it may go on. In a stream, a value equal to an
original that ``restore_pii`` put back is not redacted (the plugin sees its own
output again); the unary answer redacts such a value when the upstream wrote it.

Config:
    stream_holdback_chars (int, default 128): the streaming look-ahead window.
    types (list[str], default all kinds: secret, email, credit_card, iban,
        ip_address, phone): kinds to redact (or block on); ``[]`` turns it off.
    block_on_pii (bool, default false): block instead of redacting.
    restore_pii (bool, default false): put back ``pii_redactor``'s originals.
    canary (str | None, default None): the canary string planted in the
        system prompt.
    block_on_canary (bool, default false): block instead of removing the canary.

Metadata written:
    ``_response_sanitizer`` (dict): ``{"redacted": {kind: count},
        "restored": <placeholders replaced>, "canary_found": bool}``.
"""

from __future__ import annotations

import re
from typing import Any, ClassVar

from ringd.plugins._common import ConfigReader, iter_response_texts, map_response_texts
from ringd.plugins._detect import KINDS, PLACEHOLDER_PATTERN, Detector, Finding, substitute
from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse, StreamText


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
            {"types", "block_on_pii", "restore_pii", "canary", "block_on_canary", "stream_holdback_chars"}
        )
        self.stream_holdback_chars = reader.get_int("stream_holdback_chars", 128) or 128
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
            if self.block_on_pii:
                for text in iter_response_texts(response):
                    for finding in self.detector.find(text):
                        counts[finding.kind] = counts.get(finding.kind, 0) + 1
                if counts:
                    found_kinds = ", ".join(sorted(counts))
                    return PluginResponse.block(
                        status_code=502,
                        error_type="pii_in_response",
                        message=f"the upstream answer was withheld: it contains {found_kinds}",
                    )
            else:

                def redact(text: str) -> str:
                    new_text, findings = self.detector.replace(text, _redaction)
                    for finding in findings:
                        counts[finding.kind] = counts.get(finding.kind, 0) + 1
                    return new_text

                map_response_texts(response, redact)

        mapping = ctx.metadata.get("_pii_mapping")
        if self.restore_pii and isinstance(mapping, dict) and mapping:

            def restore(text: str) -> str:
                if "[" not in text:
                    return text

                def original(match: re.Match[str]) -> str:
                    value = mapping.get(match.group(0))
                    if not isinstance(value, str):
                        return match.group(0)
                    report["restored"] += 1
                    return value

                return PLACEHOLDER_PATTERN.sub(original, text)

            map_response_texts(response, restore)
        return PluginResponse.passthrough()

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
        mapping = ctx.metadata.get("_pii_mapping") if self.restore_pii else None
        mapping = mapping if isinstance(mapping, dict) else {}
        if self.detector.kinds:
            restored = set(mapping.values())
            # Unless final, a finding in the last word may go on in the next chunk: it waits.
            last_word = -1 if final else max(out.rfind(" "), out.rfind("\n"), out.rfind("\t"))
            findings = [
                finding
                for finding in self.detector.find(out)
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
        if mapping and "[" in out:

            def original(match: re.Match[str]) -> str:
                value = mapping.get(match.group(0))
                if not isinstance(value, str):
                    return match.group(0)
                report["restored"] += 1
                return value

            out = PLACEHOLDER_PATTERN.sub(original, out)
        return out
