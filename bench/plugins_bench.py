"""Each built-in plugin's cost per call, on a 2 KB chat body, as the default config runs it.

Loads the built-in default config (``server/default_config.yaml``) through the real
loader, on a real SQLite store in a temporary folder, and walks one request through
every ring the way a gateway would (INGRESS, PRE_FLIGHT, ROUTING, POST_FLIGHT with an
upstream answer, BACKGROUND), timing each plugin's ``execute`` alone. Every request
has a different last message, so the response cache misses and asks the store each
time (its row is "first miss"); a second pass repeats one request whose answer is
never stored, which the lookup answers from its in-process miss index ("repeated
miss"). Two changes to the default config keep the figures meaningful: the rate
limiter's request budget is raised (a bench would exhaust 600 a minute and be
blocked), and the audit log writes into the temporary folder.

Aims (issue 17): each plugin under 50 us per call, the cache lookup on a miss under
100 us. Plugins that read or write the store (rate_limiter, response_cache on a first
miss) do it on the store's event-loop connection; a write's cost is mostly SQLite's
file-lock system calls, which depend on the machine's load more than on ringd.
response_cache_store and usage_accounting queue their writes, which the store commits
every 50 ms in one transaction between requests: the last line gives that cost.

    .venv/bin/python bench/plugins_bench.py [--runs N] [--loop asyncio|uvloop] [--smoke]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from ringd.sdk import PluginAction, PluginContext, PluginHook, PluginState, RequestInfo
from ringd.server.config import load_config
from ringd.server.engine import Engine
from ringd.server.store import SqliteStore

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "server" / "default_config.yaml"
AIM_US = 50.0
CACHE_MISS_AIM_US = 100.0

SYSTEM = (
    "You are a support assistant for Northwind Logistics. Answer politely and concisely. "
    "Use the order data the user gives you; never invent tracking numbers. If you are unsure, "
    "say so and offer to escalate to a human agent. Format lists as bullet points."
)
TURNS = [
    (
        "user",
        "Hi, my order 4471-A still hasn't arrived. It was supposed to be delivered last Tuesday "
        "to our warehouse in Rotterdam. Can you check what is going on? You can reach me at "
        "maria.jansen@example.nl or on +31 20 794 0958 if you need more details.",
    ),
    (
        "assistant",
        "I'm sorry about the delay. I can see order 4471-A left our Hamburg hub on Monday and "
        "was handed to the regional carrier on Tuesday morning. The carrier reported a failed "
        "delivery attempt because the loading dock was closed. Would you like me to book a new "
        "delivery slot, or would you prefer to pick the parcel up at the depot?",
    ),
    (
        "user",
        "A new slot please, ideally Thursday between 9 and 12. Also, our finance team asks "
        "whether the delivery fee can be refunded given the delay. The invoice went to "
        "accounts@northwind-client.example and was paid from our usual account. What "
        "information do you need from us to process a refund, and how long does it usually "
        "take? We would also like to know if we can get proactive notifications next time.",
    ),
    (
        "assistant",
        "I have booked Thursday 9:00-12:00 for the redelivery. For the refund I need the "
        "invoice number and the name of the account holder; refunds normally take five to "
        "seven working days. Proactive SMS notifications can be switched on in your account "
        "settings under Notifications, or I can enable them for you now.",
    ),
    (
        "user",
        "The invoice number is INV-2024-08812 and the account holder is Northwind Client B.V. "
        "Please enable the notifications for the number I gave you earlier. Thanks a lot!",
    ),
]
BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": SYSTEM}]
    + [{"role": role, "content": text} for role, text in TURNS],
    "temperature": 0.2,
    "max_tokens": 800,
    "top_p": 1,
}
ANSWER = "Here is the summary: redelivery Thursday 9:00-12:00; refund needs INV-2024-08812. " * 4


def completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 412, "completion_tokens": 88, "total_tokens": 500},
    }


def bench_config(folder: Path) -> Path:
    """The default config, with the two changes the module docstring names."""
    data = yaml.safe_load(DEFAULT_CONFIG.read_text())
    for entry in data["plugins"]:
        if entry["name"] == "rate_limiter":
            entry["config"]["requests_per_window"] = 10**9
            entry["config"]["tokens_per_window"] = 10**12
        if entry["name"] == "audit_log":
            entry["config"]["path"] = str(folder / "audit.jsonl")
    data["store"] = str(folder / "bench.db")
    path = folder / "ringd.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


class Laps:
    """Per-plugin samples in microseconds, in the order plugins first ran."""

    def __init__(self) -> None:
        self.samples: dict[str, list[float]] = {}

    def add(self, name: str, micros: float) -> None:
        self.samples.setdefault(name, []).append(micros)


async def walk(engine: Engine, body: dict[str, Any], laps: Laps | None, *, rings: list[PluginHook]) -> None:
    """One request through ``rings``, each plugin's ``execute`` timed alone."""
    ctx = PluginContext(
        body=body,
        metadata={},
        state=engine.state,
        request_id="bench-request",
        request=RequestInfo(method="POST", path="/v1/chat/completions", headers={"content-type": "json"}),
    )
    perf = time.perf_counter
    for ring in rings:
        if ring is PluginHook.POST_FLIGHT:
            ctx.response = completion(ANSWER)
        for slot in engine.generation.rings[ring]:
            plugin = slot.loaded.instance
            if plugin is None:
                raise RuntimeError(f"{slot.name} failed to load: {slot.loaded.load_error}")
            started = perf()
            response = await plugin.execute(ctx)
            elapsed = (perf() - started) * 1e6
            if laps is not None:
                laps.add(plugin.name, elapsed)
            if response is None:
                continue
            if response.action is PluginAction.MODIFY and response.body is not None:
                ctx.body = response.body
            elif response.action is not PluginAction.PASSTHROUGH:
                raise SystemExit(f"{plugin.name} ended the ring ({response.action.value}): not a bench")


def unique_body(index: int) -> dict[str, Any]:
    body = copy.deepcopy(BODY)
    body["messages"][-1]["content"] += f" (ticket {index})"
    return body


def row(name: str, samples: list[float], aim: float) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    mean, p50 = statistics.fmean(samples), statistics.median(samples)
    verdict = "met" if p50 < aim else "OVER"
    return f"| {name:<30} | {mean:8.1f} | {p50:8.1f} | {p99:8.1f} | < {aim:.0f} | {verdict:<4} |"


async def bench(runs: int, warmup: int) -> None:
    with tempfile.TemporaryDirectory(prefix="ringd-plugins-bench-") as tmp:
        folder = Path(tmp)
        config = load_config(bench_config(folder))
        store = await SqliteStore.open(folder / "bench.db")
        engine = Engine(PluginState(extra={"store": store}))
        await engine.start(config)
        all_rings = list(PluginHook)
        try:
            for index in range(warmup):
                await walk(engine, unique_body(-1 - index), None, rings=all_rings)
                await asyncio.sleep(0)
            laps = Laps()
            for index in range(runs):
                await walk(engine, unique_body(index), laps, rings=all_rings)
                # A server's loop runs other tasks between requests (here: the audit log's
                # writer, the store's WAL checkpoints); a walk that never waits gives them none.
                await asyncio.sleep(0)
            # The same request again and again, never answered: the lookup's repeated miss.
            repeated = Laps()
            pre_flight = [PluginHook.PRE_FLIGHT]
            for _ in range(warmup):
                await walk(engine, copy.deepcopy(BODY), None, rings=pre_flight)
            for _ in range(runs):
                await walk(engine, copy.deepcopy(BODY), repeated, rings=pre_flight)
            await store.flush()
            flushes, flushed, flush_s = store.flushes, store.flushed_writes, store.flush_s
        finally:
            await engine.close(grace_s=1.0)
            await store.close()
    size = len(json.dumps(BODY).encode())
    print(
        f"Built-in plugins, default config, {size}-byte chat body, {runs} requests after {warmup} warm-up"
        f" (loop {type(asyncio.get_running_loop()).__module__}); microseconds per call:"
    )
    print(f"| {'plugin':<30} | {'mean':>8} | {'p50':>8} | {'p99':>8} | aim  | p50  |")
    print(f"|{'-' * 32}|{'-' * 10}|{'-' * 10}|{'-' * 10}|------|------|")
    for name, samples in laps.samples.items():
        if name == "response_cache":
            print(row("response_cache (first miss)", samples, CACHE_MISS_AIM_US))
            print(row("response_cache (repeated miss)", repeated.samples[name], CACHE_MISS_AIM_US))
        else:
            print(row(name, samples, AIM_US))
    # usage_accounting and response_cache_store queue their writes; the store commits the
    # queue every 50 ms in one transaction, between requests: that cost is here.
    print(
        f"Store write-behind: {flushed} queued writes in {flushes} transactions,"
        f" {flush_s / max(flushes, 1) * 1e6:.0f} us per transaction,"
        f" {flush_s / max(flushed, 1) * 1e6:.1f} us per queued write (outside the plugins' figures)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3000, help="timed requests (default 3000)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--smoke", action="store_true", help="a few runs, to check it works")
    args = parser.parse_args()
    runs, warmup = (40, 5) if args.smoke else (args.runs, max(100, args.runs // 20))
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(bench(runs, warmup))
    else:
        asyncio.run(bench(runs, warmup))


if __name__ == "__main__":
    main()
