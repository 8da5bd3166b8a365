"""Streamed answers: POST_FLIGHT chunk by chunk, with a hold-back that catches split patterns.

A :class:`StreamSession` is one streamed answer (``StreamRing`` on the wire). It
knows SDK types only: chunks are ``chat.completion.chunk`` dicts in and out. Its
rules:

1. The POST_FLIGHT plugins are split once, at open: *streaming* plugins (their class
   defines ``on_chunk``, ``stream_mode: after``) run on the text as it streams, in
   ring order; the others run ``execute`` on the assembled answer at the end,
   before anything is released (``stream_mode: buffer``) or after.
2. Hold-back, per streaming plugin and per choice index: the plugin's buffer is the
   tail it kept plus the new text. Once the buffer is longer than the plugin's
   ``stream_holdback_chars`` (or the choice's text is final: a tool-call, refusal
   or finish delta follows, or the stream ended), ``on_chunk`` gets the buffer; all
   but the last window characters of what it returned go on (to the next streaming
   plugin, the last one's to the client) and the rest is its new buffer. The cut
   moves back to just after the last whitespace before the window, so the kept
   tail starts with a whole word; with no whitespace, up to twice the window is
   held before a cut inside a word.
3. Role deltas pass at once; tool-call, refusal and finish deltas pass after the
   choice's held text, so everything keeps its order.
4. Each ``on_chunk`` call goes through the ring loop's
   :meth:`~ringd.server.ring.RingRunner.call_plugin`: time budget cut to the
   deadline, fail policy, breaker, metrics. A failure under fail_policy open lets
   the text through unchanged; under closed (or a BLOCK) the stream ends blocked.
5. Bounds: the text held back at once (all plugins, choices and buffered text) and
   the chunks held (``stream_mode: buffer``) are limited; past a limit the stream
   fails with :class:`StreamLimitError` naming the setting.
6. At the end the answer is assembled from what was released (a ``chat.completion``
   with usage from the last chunk that had one), the whole-answer plugins run on it
   through :meth:`~ringd.server.ring.RingRunner.run`, and the outcome says whether
   BACKGROUND should run on it.

Over 400 lines on purpose: one stream's state machine (per-plugin, per-choice
buffers, delta ordering, limits, the assembled answer) is one unit, read in order.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ringd.sdk import PluginAction, PluginContext, PluginHook, PluginResponse, PluginResponseError, StreamText
from ringd.server.config import StreamMode
from ringd.server.exceptions import StreamLimitError
from ringd.server.generations import Generation, LoadedPlugin, PluginSlot
from ringd.server.results import PluginOutcome, PluginResult, RingOutcome
from ringd.server.ring import PendingCall, PluginCall, RingRunner


def _chunk_return_problem(response: Any) -> str | None:
    if isinstance(response, PluginResponse):
        try:
            response.validate()  # an action set as a string after construction: its member
        except PluginResponseError as exc:
            return f"PluginResponseError: {exc}"
        if response.action not in _CHUNK_ACTIONS:
            action = response.action.value
            return f"returned PluginResponse action {action!r} from on_chunk; expected passthrough or block"
    return None


_CHUNK_ACTIONS = frozenset({PluginAction.PASSTHROUGH, PluginAction.BLOCK})

ON_CHUNK = PluginCall(
    method="on_chunk",
    returns=(str, PluginResponse),
    expected="str or PluginResponse",
    check=_chunk_return_problem,
    plain=str,
)
"""The streaming hook as the ring loop's call machinery sees it."""

_TEXT_KEYS = frozenset({"content", "role"})
"""Delta keys that do not flush a choice's held text: content is the text, role opens it."""
_CHOICE_KEYS = frozenset({"delta", "index"})
_ENVELOPE = ("id", "created", "model", "system_fingerprint", "service_tier")


@dataclass(frozen=True, slots=True)
class StreamLimits:
    """Bounds of one stream, from the server settings (names as in the config file)."""

    max_held_chars: int = 65536
    max_pending_chunks: int = 4096
    max_answer_chars: int | None = None


@dataclass(slots=True, kw_only=True)
class StreamOutcome:
    """How a stream ended: the POST_FLIGHT verdict on it, and the answer the client got.

    ``ring_outcome`` is a POST_FLIGHT :class:`RingOutcome` (action PASSTHROUGH, MODIFY
    or BLOCK; one result per plugin; its context's ``response`` is ``answer``).
    ``background`` says whether BACKGROUND should run on that context: when the
    stream finished, or was blocked after something was released.
    """

    ring_outcome: RingOutcome
    answer: dict[str, Any]
    released_chunks: int
    background: bool

    @property
    def blocked(self) -> bool:
        return self.ring_outcome.action is PluginAction.BLOCK


class _Stage:
    """One streaming plugin in one stream: its buffers per choice and its calls so far."""

    __slots__ = ("buffers", "calls", "failure", "latency_ms", "loaded", "started", "window")

    def __init__(self, loaded: LoadedPlugin, window: int) -> None:
        self.loaded = loaded
        self.window = window
        self.buffers: dict[int, str] = {}
        self.calls = 0
        self.latency_ms = 0.0
        self.started = 0.0
        self.failure: PluginResult | None = None

    def record(self, result: PluginResult) -> None:
        if not self.calls:
            self.started = result.started
        self.calls += 1
        self.latency_ms += result.latency_ms
        if result.outcome is not PluginOutcome.OK:
            self.failure = result

    def result(self, action: PluginAction) -> PluginResult:
        """The plugin's one result for the whole stream."""
        loaded, failure = self.loaded, self.failure
        if failure is None:
            return PluginResult(
                plugin=loaded.name,
                version=loaded.version,
                outcome=PluginOutcome.OK,
                action=action,
                latency_ms=self.latency_ms,
                message=f"{self.calls} on_chunk call(s)",
                started=self.started,
            )
        return PluginResult(
            plugin=loaded.name,
            version=loaded.version,
            outcome=failure.outcome,
            action=action if action is PluginAction.BLOCK else None,
            latency_ms=self.latency_ms,
            error=f"{failure.error} (the last failure of {self.calls} on_chunk call(s))",
            started=self.started,
        )


class _Choice:
    """What the client got of one choice so far, to assemble the answer."""

    __slots__ = ("content", "finish_reason", "logprobs", "refusal", "role", "tool_calls")

    def __init__(self) -> None:
        self.role: str | None = None
        self.content: list[str] = []
        self.refusal: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.finish_reason: Any = None
        self.logprobs: list[Any] = []

    def absorb(self, delta: dict[str, Any], choice: dict[str, Any]) -> None:
        """Add a released delta's non-text parts (role, refusal, tool calls) and finish reason."""
        role = delta.get("role")
        if isinstance(role, str):
            self.role = role
        refusal = delta.get("refusal")
        if isinstance(refusal, str):
            self.refusal.append(refusal)
        tool_calls = delta.get("tool_calls")
        if isinstance(tool_calls, list):
            for position, call in enumerate(tool_calls):
                if isinstance(call, dict):
                    self._merge_tool_call(call, position)
        if choice.get("finish_reason") is not None:
            self.finish_reason = choice["finish_reason"]
        logprobs = choice.get("logprobs")
        if isinstance(logprobs, dict) and isinstance(logprobs.get("content"), list):
            self.logprobs.extend(logprobs["content"])

    def _merge_tool_call(self, call: dict[str, Any], position: int) -> None:
        index = call.get("index", position)
        merged = self.tool_calls.setdefault(index if isinstance(index, int) else position, {})
        for key, value in call.items():
            if key == "index":
                continue
            if key == "function" and isinstance(value, dict):
                function = merged.setdefault("function", {})
                for name, part in value.items():
                    if isinstance(part, str) and isinstance(function.get(name), str):
                        function[name] += part
                    else:
                        function[name] = part
            else:
                merged[key] = value

    def message(self) -> dict[str, Any]:
        text = "".join(self.content)
        message: dict[str, Any] = {
            "role": self.role or "assistant",
            "content": text if text or not self.tool_calls else None,
        }
        if self.refusal:
            message["refusal"] = "".join(self.refusal)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[index] for index in sorted(self.tool_calls)]
        return message


class StreamSession:
    """One streamed answer through POST_FLIGHT. Use as a context manager (it holds a generation).

    ``await feed(chunk)`` per upstream chunk and ``await finish()`` at the end; each
    returns the chunks released now and, once the stream has ended (blocked, or
    finished), its :class:`StreamOutcome`.
    """

    def __init__(
        self,
        *,
        runner: RingRunner,
        generation: Generation,
        ctx: PluginContext,
        deadline: float | None,
        deadline_perf: float | None,
        limits: StreamLimits,
    ) -> None:
        self._runner = runner
        self._generation = generation
        self._ctx = ctx
        self._deadline = deadline
        self._deadline_perf = deadline_perf
        self._limits = limits
        self._stages: list[_Stage] = []
        self._before: list[PluginSlot] = []
        self._after: list[PluginSlot] = []
        self._skipped: list[PluginResult] = []
        for slot in generation.rings[PluginHook.POST_FLIGHT]:
            loaded = slot.loaded
            instance = loaded.instance
            streaming = instance is not None and callable(getattr(type(instance), "on_chunk", None))
            if slot.entry.stream_mode is StreamMode.BUFFER:
                self._before.append(slot)
            elif not slot.enabled and streaming:
                self._skipped.append(
                    PluginResult(plugin=loaded.name, version=loaded.version, outcome=PluginOutcome.SKIPPED)
                )
            elif streaming:
                window = getattr(loaded.instance, "stream_holdback_chars", 0)
                self._stages.append(_Stage(loaded, window if isinstance(window, int) and window > 0 else 0))
            else:
                self._after.append(slot)
        self._choices: dict[int, _Choice] = {}
        self._envelope: dict[str, Any] = {}
        self._usage: Any = None
        self._held: list[dict[str, Any]] = []  # released chunks held for buffer-mode plugins
        self._held_text = 0
        self._answer_chars = 0
        self._released = 0
        self._ended = False
        self._left = False
        self._block: tuple[str, PluginResponse] = ("", PluginResponse.passthrough())
        self._block_stage: _Stage | None = None

    def __enter__(self) -> StreamSession:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Drop what the stream holds and release its generation (idempotent)."""
        if not self._left:
            self._left = True
            self._held.clear()
            for stage in self._stages:
                stage.buffers.clear()
            self._generation.leave()

    @property
    def context(self) -> PluginContext:
        return self._ctx

    # ------------------------------------------------------------------ chunks

    async def feed(self, chunk: dict[str, Any]) -> tuple[list[dict[str, Any]], StreamOutcome | None]:
        """Take one upstream chunk (already checked by the caller); return what is released now.

        Raises:
            StreamLimitError: the stream now holds more than a limit allows.
        """
        if self._ended:
            raise RuntimeError("the stream has ended")
        if not self._envelope:
            self._envelope = {key: chunk[key] for key in _ENVELOPE if key in chunk}
        usage = chunk.get("usage")
        if usage is not None:
            self._usage = usage
        out_choices: list[dict[str, Any]] = []
        for choice in chunk.get("choices") or ():
            index: int = choice["index"]
            delta = choice.get("delta") or {}
            text = delta.get("content") or ""
            final = choice.get("finish_reason") is not None or not _TEXT_KEYS.issuperset(delta)
            released = await self._through(index, text, final) if self._stages else text
            if released is None:
                return [], self._blocked_outcome()
            out_delta = delta.copy()  # the delta without its content, which goes last if any
            had_content = "content" in out_delta
            if had_content:
                del out_delta["content"]
            if released or (had_content and out_delta):
                out_delta["content"] = released
            state = self._choices.get(index) or self._choice(index)
            state.absorb(out_delta, choice)
            if released:
                self._add_text(state, released)
            if out_delta or any(
                value is not None and key not in _CHOICE_KEYS for key, value in choice.items()
            ):
                out_choices.append({**choice, "delta": out_delta})
        self._check_held()
        if not out_choices and usage is None:
            return [], None
        return self._release([{**chunk, "choices": out_choices}]), None

    async def finish(self) -> tuple[list[dict[str, Any]], StreamOutcome]:
        """The upstream stream ended: flush the held text, run the whole-answer plugins."""
        if self._ended:
            raise RuntimeError("the stream has ended")
        tail: list[dict[str, Any]] = []
        held_choices = sorted({index for stage in self._stages for index in stage.buffers})
        for index in held_choices:
            released = await self._through(index, "", True)
            if released is None:
                return [], self._blocked_outcome()
            if released:
                self._add_text(self._choice(index), released)
                choice = {"index": index, "delta": {"content": released}, "finish_reason": None}
                tail.append(self._chunk([choice]))
        answer = self._assemble()
        ctx = self._ctx
        ctx.response = answer
        results = [stage.result(PluginAction.PASSTHROUGH) for stage in self._stages] + self._skipped
        action, decision, decided_by = PluginAction.PASSTHROUGH, None, None
        if self._before:
            snapshot = copy.deepcopy(answer)
            before = await self._run_whole(self._before)
            results.extend(before.results)
            if before.action is PluginAction.BLOCK:
                return [], self._outcome(before, results, background=self._released > 0)
            if before.action is PluginAction.MODIFY:
                action, decision, decided_by = before.action, before.decision, before.decided_by
            if isinstance(ctx.response, dict) and ctx.response != snapshot:
                released_now = self._rechunk(ctx.response)  # a buffer-mode plugin rewrote the answer
            else:
                released_now = [*self._held, *tail]
            self._held.clear()
            self._held_text = 0
        else:
            released_now = tail
        self._released += len(released_now)
        if self._after:
            after = await self._run_whole(self._after)
            results.extend(after.results)
            if after.action is PluginAction.BLOCK:
                return released_now, self._outcome(after, results, background=self._released > 0)
            if after.action is PluginAction.MODIFY:
                action, decision, decided_by = after.action, after.decision, after.decided_by
        ring_outcome = RingOutcome(
            ring=PluginHook.POST_FLIGHT,
            action=action,
            context=ctx,
            results=results,
            config_version=self._generation.version,
            generation=self._generation.number,
            decision=decision,
            decided_by=decided_by,
        )
        self._ended = True
        answer_now = ctx.response if isinstance(ctx.response, dict) else answer
        return released_now, StreamOutcome(
            ring_outcome=ring_outcome, answer=answer_now, released_chunks=self._released, background=True
        )

    # ------------------------------------------------------------------ hold-back

    async def _through(self, index: int, text: str, final: bool) -> str | None:
        """Pass one choice's new text through the streaming plugins; None when one blocked.

        Each plugin's hold-back (rule 2) is written out here rather than in a method per
        plugin: this runs for every chunk, and a call that settles without suspending
        (most do) then costs no coroutine of its own.
        """
        runner, ctx, deadline_perf = self._runner, self._ctx, self._deadline_perf
        for stage in self._stages:
            buffers = stage.buffers
            buffer = buffers.pop(index) + text if index in buffers else text
            window = stage.window
            if not buffer or (not final and len(buffer) <= window):
                if buffer:
                    buffers[index] = buffer
                if final:
                    text = ""
                    continue  # nothing new here, but the later plugins flush what they hold
                return ""  # everything is held: the later plugins have nothing new
            stream_text = _new_str(StreamText, buffer)  # StreamText(buffer, ...) without its keywords
            stream_text.choice = index
            stream_text.final = final
            loaded = stage.loaded
            call = runner.call_plugin(loaded, ON_CHUNK, ctx, (stream_text,), deadline_perf)
            if isinstance(call, PendingCall):
                call = await call
            result, response, block = call
            stage.record(result)
            if response is None:  # failed: blocks if fail-closed, else the text goes on unchanged
                if block is not None:
                    self._block = (loaded.name, block)
                    self._block_stage = stage
                    return None
                out = buffer
            elif response.__class__ is str:
                out = response
            elif isinstance(response, str):
                out = str(response)
            elif response.action is PluginAction.BLOCK:
                loaded.metrics.blocks += 1
                self._block = (loaded.name, response)
                self._block_stage = stage
                return None
            else:
                out = buffer
            text = out if final or not window else _cut(out, window, buffers, index)
            if not text and not final:
                return ""
        return text

    # ------------------------------------------------------------------ helpers

    def _choice(self, index: int) -> _Choice:
        state = self._choices.get(index)
        if state is None:
            state = self._choices[index] = _Choice()
        return state

    def _add_text(self, state: _Choice, text: str) -> None:
        state.content.append(text)
        self._answer_chars += len(text)
        limit = self._limits.max_answer_chars
        if limit is not None and self._answer_chars > limit:
            raise StreamLimitError(
                f"the streamed answer is over {limit} characters, more than server.max_message_bytes "
                "lets ringd send back assembled; raise the limit or stream a shorter answer"
            )

    def _release(self, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if not self._before:
            self._released += len(chunks)
            return chunks
        self._held.extend(chunks)
        for chunk in chunks:
            for choice in chunk["choices"]:
                content = choice["delta"].get("content")
                if isinstance(content, str):
                    self._held_text += len(content)
        limit = self._limits.max_pending_chunks
        if len(self._held) > limit:
            raise StreamLimitError(
                f"the stream holds more than server.stream_max_pending_chunks ({limit}) chunks: a "
                "stream_mode: buffer plugin holds the whole answer; raise the limit or use stream_mode: after"
            )
        self._check_held()
        return []

    def _check_held(self) -> None:
        held = self._held_text
        for stage in self._stages:
            for buffer in stage.buffers.values():
                held += len(buffer)
        limit = self._limits.max_held_chars
        if held > limit:
            raise StreamLimitError(
                f"the stream holds {held} characters back, more than server.stream_max_held_chars ({limit}); "
                "raise the limit, lower the plugins' stream_holdback_chars, or use stream_mode: after"
            )

    def _chunk(self, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {**self._envelope, "object": "chat.completion.chunk", "choices": choices}

    def _assemble(self) -> dict[str, Any]:
        answer: dict[str, Any] = {**self._envelope, "object": "chat.completion"}
        answer["choices"] = [
            {"index": index, "message": state.message(), "finish_reason": state.finish_reason}
            | ({"logprobs": {"content": state.logprobs}} if state.logprobs else {})
            for index, state in sorted(self._choices.items())
        ]
        if isinstance(self._usage, dict):
            answer["usage"] = self._usage
        return answer

    def _rechunk(self, answer: dict[str, Any]) -> list[dict[str, Any]]:
        """A rewritten answer as chunks: one per choice (role, content, tool calls, finish), then usage."""
        chunks = []
        for choice in _dicts(answer.get("choices")):
            raw = choice.get("message")
            message: dict[str, Any] = raw if isinstance(raw, dict) else {}
            delta: dict[str, Any] = {
                "role": message.get("role", "assistant"),
                "content": message.get("content"),
            }
            if isinstance(message.get("tool_calls"), list):
                delta["tool_calls"] = [
                    {"index": position, **call} for position, call in enumerate(_dicts(message["tool_calls"]))
                ]
            finish = choice.get("finish_reason")
            chunks.append(
                self._chunk([{"index": choice.get("index", 0), "delta": delta, "finish_reason": finish}])
            )
        if isinstance(answer.get("usage"), dict):
            chunks.append({**self._chunk([]), "usage": answer["usage"]})
        return chunks

    async def _run_whole(self, slots: list[PluginSlot]) -> RingOutcome:
        """Run whole-answer plugins on the assembled answer, as the unary ring would."""
        ring = PluginHook.POST_FLIGHT
        return await self._runner.run(self._generation, ring, self._ctx, self._deadline, slots)

    def _blocked_outcome(self) -> StreamOutcome:
        """The outcome of a block by a streaming plugin (in ``self._block``)."""
        name, decision = self._block
        results = [
            stage.result(PluginAction.BLOCK if stage is self._block_stage else PluginAction.PASSTHROUGH)
            for stage in self._stages
        ]
        ring_outcome = RingOutcome(
            ring=PluginHook.POST_FLIGHT,
            action=PluginAction.BLOCK,
            context=self._ctx,
            results=results + self._skipped,
            config_version=self._generation.version,
            generation=self._generation.number,
            decision=decision,
            decided_by=name,
        )
        return self._ended_with(ring_outcome, background=self._released > 0)

    def _outcome(
        self, ring_outcome: RingOutcome, results: list[PluginResult], *, background: bool
    ) -> StreamOutcome:
        ring_outcome.results = results
        return self._ended_with(ring_outcome, background=background)

    def _ended_with(self, ring_outcome: RingOutcome, *, background: bool) -> StreamOutcome:
        self._ended = True
        answer = self._assemble() if self._ctx.response is None else self._ctx.response
        self._ctx.response = answer
        return StreamOutcome(
            ring_outcome=ring_outcome, answer=answer, released_chunks=self._released, background=background
        )


def _cut(out: str, window: int, buffers: dict[int, str], index: int) -> str:
    """Hold the last ``window`` characters of ``out`` (from a word start) in ``buffers``; return the rest."""
    cut = len(out) - window
    if cut <= 0:
        buffers[index] = out
        return ""
    # Keep whole words: cut after the last whitespace before the window, if any, so the
    # next call sees the word at the window's edge from its start. Newline and tab are
    # looked for only after the last space: the latest of the three is the boundary.
    boundary = out.rfind(" ", 0, cut)
    newline = out.rfind("\n", boundary + 1, cut)
    if newline >= 0:
        boundary = newline
    tab = out.rfind("\t", boundary + 1, cut)
    if tab >= 0:
        boundary = tab
    if boundary >= 0:
        cut = boundary + 1
    elif len(out) <= 2 * window:  # no whitespace yet: hold up to twice the window
        buffers[index] = out
        return ""
    buffers[index] = out[cut:]
    return out[:cut]


_new_str = str.__new__


def _dicts(items: Any) -> Iterable[dict[str, Any]]:
    if isinstance(items, list):
        yield from (item for item in items if isinstance(item, dict))
