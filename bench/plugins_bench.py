"""In-process cost of the default PRE_FLIGHT plugins on a realistic 2 KB chat body.

Runs pii_redactor, prompt_guard, response_cache (lookup, always a miss) and
max_tokens_clamp in sequence, the way the engine runs a ring: one shared
context, a MODIFY replacing the body for the next plugin. Each run gets a fresh
context (built outside the timed section). Prints the mean, p50 and p99 in
microseconds per plugin and for the ring; the aim is a ring mean under 1000 us.

The cache lookup reads a real SQLite store (aiosqlite, one worker-thread hop
per read), so its time depends on the machine's load more than anything else.

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

from ringd.plugins.max_tokens_clamp import MaxTokensClamp
from ringd.plugins.pii_redactor import PiiRedactor
from ringd.plugins.prompt_guard import PromptGuard
from ringd.plugins.response_cache import ResponseCacheLookup
from ringd.sdk import BasePlugin, PluginAction, PluginContext, PluginState
from ringd.server.store import SqliteStore

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
        "take? We would also like to know if we can get proactive notifications next time, "
        "for example a text message the day before the delivery, so someone is at the dock.",
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
        "Please enable the notifications for the number I gave you earlier. One more thing: "
        "can you summarise everything we agreed in a short list so I can forward it to my "
        "colleague? Thanks a lot for the quick help, this is much appreciated.",
    ),
]
BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [{"role": "system", "content": SYSTEM}]
    + [{"role": role, "content": text} for role, text in TURNS],
    "temperature": 0.2,
    "max_tokens": 8000,
    "top_p": 1,
}


async def run_ring(plugins: list[BasePlugin], ctx: PluginContext, laps: list[list[float]]) -> None:
    """Run the plugins like the engine: MODIFY replaces the body, BLOCK/CACHE_HIT end the ring."""
    for index, plugin in enumerate(plugins):
        started = time.perf_counter()
        outcome = await plugin.execute(ctx)
        if outcome.action is PluginAction.MODIFY and outcome.body is not None:
            ctx.body = outcome.body
        laps[index].append((time.perf_counter() - started) * 1e6)
        if outcome.action in (PluginAction.BLOCK, PluginAction.CACHE_HIT):
            raise SystemExit(f"{plugin.name} ended the ring ({outcome.action.value}): not a bench")


def summary(samples: list[float]) -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"mean {statistics.fmean(samples):8.1f}  p50 {statistics.median(samples):8.1f}  p99 {p99:8.1f}"


async def bench(runs: int, warmup: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        store = await SqliteStore.open(Path(folder) / "bench.db")
        try:
            plugins: list[BasePlugin] = [
                PiiRedactor({"mode": "mask", "restore": True}),
                PromptGuard({"action": "block"}),
                ResponseCacheLookup({"max_temperature": 1.0}),
                MaxTokensClamp({"max_tokens": 4096}),
            ]
            for plugin in plugins:
                await plugin.on_load()
            state = PluginState(extra={"store": store})
            laps: list[list[float]] = [[] for _ in plugins]
            totals: list[float] = []
            for run in range(warmup + runs):
                ctx = PluginContext(
                    body=copy.deepcopy(BODY),
                    metadata={"tenant": "acme"},
                    state=state,
                    request_id=f"bench-{run}",
                )
                started = time.perf_counter()
                await run_ring(plugins, ctx, laps)
                totals.append((time.perf_counter() - started) * 1e6)
            body_bytes = len(json.dumps(BODY).encode())
            print(f"PRE_FLIGHT ring on a {body_bytes}-byte chat body, {runs} runs (microseconds):")
            for plugin, samples in zip(plugins, laps, strict=True):
                print(f"  {plugin.name:<18} {summary(samples[warmup:])}")
            ring = totals[warmup:]
            print(f"  {'ring total':<18} {summary(ring)}")
            verdict = "within" if statistics.fmean(ring) < 1000 else "OVER"
            print(f"ring mean {statistics.fmean(ring):.1f} us: {verdict} the 1000 us aim")
            for plugin in plugins:
                await plugin.on_unload()
        finally:
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5000, help="timed runs (default 5000)")
    parser.add_argument("--loop", choices=("asyncio", "uvloop"), default="uvloop")
    parser.add_argument("--smoke", action="store_true", help="a few runs, to check it works")
    args = parser.parse_args()
    runs, warmup = (50, 5) if args.smoke else (args.runs, max(100, args.runs // 20))
    print(f"event loop: {args.loop}")
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(bench(runs, warmup))
    else:
        asyncio.run(bench(runs, warmup))


if __name__ == "__main__":
    main()
