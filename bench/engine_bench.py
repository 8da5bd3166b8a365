"""In-process cost of a ring: what the engine adds around the plugins themselves.

Measures, with the engine as it always runs (per-plugin timeouts, a caller's
deadline, metrics, breaker, per-plugin results):

* a PRE_FLIGHT ring of 5 passthrough plugins, loaded from a plugin file through a
  YAML config (the real loader path), total and per plugin;
* an empty PRE_FLIGHT ring (no plugins), the bare cost of ``execute_ring``;
* the built-in default config's PRE_FLIGHT ring, when the default config has one;
* one ``type: wasm`` passthrough plugin (wasm/modules/passthrough.wasm, a worker
  thread per call, the JSON protocol both ways) beside one Python passthrough, and
  the Python passthrough again while a runaway WASM plugin (wasm/modules/spin.wasm)
  spins on another ring, again and again, until its 200 ms limit stops it.
* the text scanners (pii_redactor, prompt_guard) in MB/s on 1 MB of adversarial text
  of several kinds (IPv6-like runs, emails everywhere, long digit runs, digit groups,
  near-miss secrets and injection anchors, "@" runs, long local parts, a mix); aim
  >= 20 MB/s each;
* the latency (p50/p99/max) of small PRE_FLIGHT rings on the default pipeline while
  a 4 MB hostile body is scanned by the same engine (the scanners yield to the loop).

Each ring gets a fresh PluginContext with a ~2 KB OpenAI-style chat body, built
outside the timed section. Times are per ring, in microseconds: mean and p50 (and
p99) over ``--rings`` rings after a warm-up. Aim: <= 5 us per passthrough plugin.

    .venv/bin/python bench/engine_bench.py [--rings N] [--loop asyncio|uvloop] [--smoke]
    .venv/bin/python bench/engine_bench.py --profile   # pyinstrument over the 5-plugin ring
    .venv/bin/python bench/engine_bench.py --scan-only # the scanner figures alone
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml
from ringd.plugins.pii_redactor import PiiRedactor
from ringd.plugins.prompt_guard import PromptGuard
from ringd.sdk import PluginContext, PluginHook, PluginState
from ringd.server.config import RingdConfig, default_config, load_config
from ringd.server.engine import Engine, PluginOutcome
from ringd.server.exceptions import ConfigError
from ringd.server.store import SqliteStore

PASSTHROUGH_PLUGIN = """
from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse


class Passthrough(BasePlugin):
    name = "passthrough"
    hook = PluginHook.PRE_FLIGHT
    timeout_ms = 10

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        return PluginResponse.passthrough()
"""

PLUGIN_COUNT = 5
_CLEAN = (PluginOutcome.OK, PluginOutcome.SKIPPED)


def chat_body_json() -> str:
    """A ~2 KB chat completion request, as JSON text (parsed afresh for every ring)."""
    system = (
        "You are a support assistant for a logistics company. Answer politely and concisely. "
        "Use the order data the user gives you; never invent tracking numbers. If unsure, say so."
    )
    turns = [
        ("user", "Hi, my order 48213 has not arrived yet. It was due on Monday. Can you check it?"),
        ("assistant", "Sorry about that. Order 48213 left the depot on Friday and is in transit."),
        ("user", "It says in transit for three days now. Is that normal for standard shipping?"),
        ("assistant", "Standard shipping usually takes 3 to 5 working days; it is within range."),
        ("user", "OK. Could you tell me which carrier has it and whether I can change the address?"),
        ("assistant", "The carrier is the regional partner; address changes need a support ticket."),
        ("user", "Please open a ticket then, and summarise the delivery options I have left."),
    ]
    messages = [{"role": "system", "content": system}]
    messages += [{"role": role, "content": f"{text} (turn {i})"} for i, (role, text) in enumerate(turns)]
    body: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": messages,
        "temperature": 0.2,
        "max_tokens": 512,
        "user": "customer-7781",
        "metadata": {"tenant": "northwind", "channel": "web", "session": "s-0f3a9c"},
    }
    text = json.dumps(body)
    while len(text) < 2048:
        body["messages"].append({"role": "user", "content": "Thanks, and one more question please."})
        text = json.dumps(body)
    return text


async def open_engine(config: RingdConfig, store: SqliteStore) -> Engine:
    engine = Engine(PluginState(extra={"store": store}))
    await engine.start(config)
    return engine


async def measure(engine: Engine, body_json: str, rings: int, warmup: int) -> list[float]:
    """Time ``rings`` PRE_FLIGHT rings (after ``warmup`` untimed ones); microseconds each."""
    execute_ring = engine.execute_ring
    hook = PluginHook.PRE_FLIGHT
    perf = time.perf_counter_ns
    loads = json.loads
    for _ in range(warmup):
        ctx = PluginContext(body=loads(body_json), request_id="warmup")
        await execute_ring(hook, ctx, deadline=time.monotonic() + 5.0)
    samples: list[float] = []
    append = samples.append
    for index in range(rings):
        ctx = PluginContext(body=loads(body_json), session_id="s-0f3a9c", request_id=f"r{index}")
        deadline = time.monotonic() + 5.0  # as a gateway's gRPC deadline would arrive
        started = perf()
        outcome = await execute_ring(hook, ctx, deadline=deadline)
        append((perf() - started) / 1000.0)
        if any(result.outcome not in _CLEAN for result in outcome.results):
            raise RuntimeError(f"a plugin failed, the figures would be wrong: {outcome.results}")
    return samples


def summary(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return statistics.fmean(ordered), statistics.median(ordered), p99


def line(label: str, samples: list[float]) -> str:
    mean, p50, p99 = summary(samples)
    return f"  {label:<34} mean {mean:8.2f} us   p50 {p50:8.2f} us   p99 {p99:8.2f} us"


def write_passthrough_config(folder: Path, count: int) -> Path:
    (folder / "passthrough.py").write_text(PASSTHROUGH_PLUGIN)
    entries = "\n".join(
        f"  - {{name: pass{i}, entrypoint: passthrough.py:Passthrough, hook: pre_flight}}"
        for i in range(count)
    )
    path = folder / "bench.yaml"
    path.write_text(f"version: bench\nplugins:\n{entries}\n")
    return path


def load_default_config() -> tuple[RingdConfig | None, str]:
    """The built-in default config, or why there is none to measure."""
    try:
        import ringd.plugins  # noqa: F401  (the built-ins must be importable)

        return default_config(), ""
    except (ImportError, FileNotFoundError, ConfigError) as exc:
        return None, f"no built-in default config ({type(exc).__name__}: {exc})"


async def bench_default_config(store: SqliteStore, body_json: str, rings: int, warmup: int) -> None:
    config, why = load_default_config()
    if config is None:
        print(f"  default config PRE_FLIGHT ring: skipped ({why})")
        return
    default = await open_engine(config, store)
    try:
        ring = default.generation.rings[PluginHook.PRE_FLIGHT]
        if not ring:
            print(
                "  default config PRE_FLIGHT ring: skipped (the default config has no PRE_FLIGHT plugins yet)"
            )
            return
        samples = await measure(default, body_json, rings, warmup)
    finally:
        await default.close(grace_s=1.0)
    print(line("default config PRE_FLIGHT ring", samples))
    print(f"    plugins: {', '.join(slot.name for slot in ring)} (config {config.version})")


WASM_MODULES = Path(__file__).resolve().parents[1] / "wasm" / "modules"


async def spin_until(engine: Engine, stop: asyncio.Event) -> int:
    """Run the runaway plugin's ring back to back until ``stop``; the number of timeouts."""
    timeouts = 0
    while not stop.is_set():
        outcome = await engine.execute_ring(PluginHook.INGRESS, PluginContext(body={"spin": True}))
        timeouts += sum(result.outcome is PluginOutcome.TIMEOUT for result in outcome.results)
    return timeouts


async def measure_for(engine: Engine, body_json: str, seconds: float) -> list[float]:
    """Time PRE_FLIGHT rings one per millisecond for ``seconds``; microseconds each."""
    samples: list[float] = []
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        ctx = PluginContext(body=json.loads(body_json), request_id="r")
        started = time.perf_counter_ns()
        outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, ctx, deadline=time.monotonic() + 5.0)
        samples.append((time.perf_counter_ns() - started) / 1000.0)
        if any(result.outcome not in _CLEAN for result in outcome.results):
            raise RuntimeError(f"a plugin failed, the figures would be wrong: {outcome.results}")
        await asyncio.sleep(0.001)
    return samples


async def bench_wasm(
    folder: Path, store: SqliteStore, body_json: str, rings: int, warmup: int, seconds: float
) -> None:
    """One WASM passthrough plugin's ring beside one Python passthrough's, and the empty ring."""
    for module in ("passthrough", "spin"):
        (folder / f"{module}.wasm").write_bytes((WASM_MODULES / f"{module}.wasm").read_bytes())
    cases = {
        "1 Python passthrough plugin": "{name: py, entrypoint: passthrough.py:Passthrough, hook: pre_flight}",
        "1 WASM passthrough plugin": (
            "{name: wasm, type: wasm, entrypoint: passthrough.wasm, hook: pre_flight, timeout_ms: 1000}"
        ),
    }
    empty_path = folder / "empty.yaml"
    empty = await open_engine(load_config(empty_path), store)
    try:
        empty_p50 = summary(await measure(empty, body_json, rings, warmup))[1]
    finally:
        await empty.close(grace_s=1.0)
    for label, entry in cases.items():
        path = folder / "one.yaml"
        path.write_text(f"version: one\nplugins:\n  - {entry}\n")
        engine = await open_engine(load_config(path), store)
        try:
            samples = await measure(engine, body_json, rings, warmup)
        finally:
            await engine.close(grace_s=1.0)
        print(line(label, samples) + f"   (p50 minus empty ring: {summary(samples)[1] - empty_p50:.2f} us)")
    runaway_path = folder / "runaway.yaml"
    runaway_path.write_text(
        "version: runaway\nplugins:\n  - {name: spin, type: wasm, entrypoint: spin.wasm, hook: ingress, "
        "timeout_ms: 200, fail_policy: closed}\n"
    )
    path = folder / "one.yaml"
    path.write_text(f"version: one\nplugins:\n  - {cases['1 Python passthrough plugin']}\n")
    runaway, python = (
        await open_engine(load_config(runaway_path), store),
        await open_engine(load_config(path), store),
    )
    quiet = await measure_for(python, body_json, seconds)
    print(line("  the same, paced 1 per ms", quiet))
    print(f"    {len(quiet)} rings over {seconds:.1f} s")
    stop = asyncio.Event()
    spinner = asyncio.create_task(spin_until(runaway, stop))
    try:
        samples = await measure_for(python, body_json, seconds)
    finally:
        stop.set()
        timeouts = await spinner
        await runaway.close(grace_s=1.0)
        await python.close(grace_s=1.0)
    print(line("  the same, paced, a WASM runaway spinning", samples))
    print(
        f"    {len(samples)} rings over {seconds:.1f} s, one per ms; {timeouts} runaway calls stopped at 200 ms"
    )


# --------------------------------------------------------------------------- scanners


def adversarial_corpora(size: int) -> dict[str, str]:
    """Texts of ``size`` characters built to make a PII/injection scanner work hard."""
    rnd = random.Random(7)
    hexdigits = "0123456789abcdef"

    def fill(make: Any) -> str:
        parts: list[str] = []
        total = 0
        while total < size:
            part = make()
            parts.append(part)
            total += len(part)
        return "".join(parts)[:size]

    def ipv6ish() -> str:
        groups = (
            "".join(rnd.choice(hexdigits) for _ in range(rnd.randint(0, 4)))
            for _ in range(rnd.randint(2, 12))
        )
        return ":".join(groups) + rnd.choice([" ", "::", ":", "\n", "x"])

    near_miss = [
        "sk-abc ", "AKIA12 ", "Bearer x ", "password= ", "api_key: no ", "-----BEGIN x ", "ghp_1 ",
        "eyJabc.eyJ ", "ignore the ", "you are ", "reveal your ", "<|im ", "new instructions ",
        "pretend you ", "a@b ", "@@@ ", "DE89 ", "+1 (", "1.2.3.", "::", "GB82WEST ",
    ]  # fmt: skip
    corpora = {
        "ipv6-like": fill(ipv6ish),
        "emails": fill(lambda: f"user{rnd.randint(0, 99999)}.x@mail{rnd.randint(0, 99)}.example.com "),
        "digit run": "".join(rnd.choice("0123456789") for _ in range(size)),
        "digit groups": fill(
            lambda: (
                " ".join(str(rnd.randint(0, 9999)) for _ in range(6)) + rnd.choice([" - ", ". ", " (", ") +"])
            )
        ),
        "near-miss": fill(lambda: rnd.choice(near_miss)),
        "at-signs": "a" * 63 + "@" * (size - 63),
        "long local parts": fill(lambda: "a" * 500 + "@"),
    }
    corpora["mix"] = fill(lambda: rnd.choice(list(corpora.values()))[: rnd.randint(50, 400)] + " ")
    # Non-ASCII: internationalised addresses (Unicode classes), and the mix with an "é" in
    # every window the scanners cut (the way back to a slow path, were non-ASCII text
    # scanned otherwise: the native scan takes any text).
    corpora["emails, IDN"] = fill(
        lambda: (
            rnd.choice(["jürgen", "ユーザー", "δοκιμή", "user"])
            + f"{rnd.randint(0, 99999)}@"
            + rnd.choice(["müller", "例え", "παράδειγμα", "mail"])
            + f"{rnd.randint(0, 99)}."
            + rnd.choice(["de", "jp", "δοκιμή", "com"])
            + " "
        )
    )
    mix = corpora["mix"]
    corpora["mix + é"] = "".join(mix[i : i + 999] + "é" for i in range(0, size, 1000))[:size]
    return corpora


async def scanner_throughput(size: int, repeat: int) -> None:
    """MB/s of pii_redactor and prompt_guard (as configured by default) per corpus."""
    scanners = {
        "pii_redactor": PiiRedactor({"mode": "mask", "restore": True, "pii_key": "00" * 32}),
        "prompt_guard": PromptGuard({"action": "flag"}),
    }
    print(f"  scanners on {size / 1e6:.1f} MB of adversarial text (best of {repeat}; aim >= 20 MB/s):")
    print(f"    {'corpus':<18}" + "".join(f"{name:>16}" for name in scanners))
    worst = dict.fromkeys(scanners, float("inf"))
    for corpus, text in adversarial_corpora(size).items():
        row = []
        for name, plugin in scanners.items():
            best = float("inf")
            for _ in range(repeat):
                ctx = PluginContext(body={"messages": [{"role": "user", "content": text}]})
                started = time.perf_counter()
                await plugin.execute(ctx)
                best = min(best, time.perf_counter() - started)
            rate = len(text.encode()) / best / 1e6
            worst[name] = min(worst[name], rate)
            row.append(f"{rate:10.1f} MB/s")
        print(f"    {corpus:<18}" + "".join(f"{cell:>16}" for cell in row))
    print(f"    {'worst':<18}" + "".join(f"{worst[name]:10.1f} MB/s".rjust(16) for name in scanners))


def hostile_body_text(size: int) -> str:
    unit = (
        "user.name+tag@mail.example.com fe80::1:2:3:4:5:6:7 ::ffff: a:b:c:: 4111111111111111222233334444 "
        "sk-short AKIA12 Bearer x password= ignore the you are reveal your +1 (555) 123 45 67 89 "
    )
    return (unit * (size // len(unit) + 1))[:size]


async def others_during_big_scan(store: SqliteStore, big_chars: int, folder: Path) -> None:
    """p50/p99 of small PRE_FLIGHT rings while one big hostile body is scanned on the same engine."""
    config, why = load_default_config()
    if config is None:
        print(f"  others during a big scan: skipped ({why})")
        return
    from importlib import resources

    document = yaml.safe_load(resources.files("ringd.server").joinpath("default_config.yaml").read_text())
    for entry in document["plugins"]:
        entry["timeout_ms"] = 120_000  # the whole body is scanned: the figure is the others' latency
        if entry["name"] in {"prompt_guard", "pii_redactor"}:
            entry["config"] = {**entry.get("config", {}), "max_scan_chars": 2 * big_chars}
        if entry["name"] in {"pii_redactor", "response_sanitizer", "response_cache", "response_cache_store"}:
            entry["config"] = {**entry.get("config", {}), "pii_key": "00" * 32}  # one key, no warning
    path = folder / "scan.yaml"
    path.write_text(yaml.safe_dump(document))
    engine = await open_engine(load_config(path), store)
    try:
        hook = PluginHook.PRE_FLIGHT
        small_body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}]}
        big_ctx = PluginContext(
            body={
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": hostile_body_text(big_chars)}],
            },
            request_id="big",
        )
        started = time.perf_counter()
        big = asyncio.create_task(engine.execute_ring(hook, big_ctx, deadline=time.monotonic() + 600))
        samples: list[float] = []

        async def small(index: int, arrived: float) -> None:
            ctx = PluginContext(body=json.loads(json.dumps(small_body)), request_id=f"small{index}")
            await engine.execute_ring(hook, ctx, deadline=time.monotonic() + 600)
            samples.append((time.perf_counter() - arrived) * 1000)  # waiting for the loop included

        # A small request arrives every 2 ms while the big one is being scanned.
        tasks: list[asyncio.Task[None]] = []
        while not big.done():
            tasks.append(asyncio.create_task(small(len(tasks), time.perf_counter())))
            await asyncio.sleep(0.002)
        await asyncio.gather(*tasks)
        outcome = await big
        big_s = time.perf_counter() - started
    finally:
        await engine.close(grace_s=1.0)
    ordered = sorted(samples) or [0.0]
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"  others during a {big_chars / 1e6:.1f} MB hostile PRE_FLIGHT scan ({big_s:.2f} s, {outcome.action}): "
        f"{len(samples)} small rings, p50 {statistics.median(ordered):.1f} ms, p99 {p99:.1f} ms, "
        f"max {ordered[-1]:.1f} ms (aim: p99 < 50 ms)"
    )


async def run(rings: int, warmup: int, profile: bool) -> None:
    body_json = chat_body_json()
    with tempfile.TemporaryDirectory(prefix="ringd-bench-") as tmp:
        folder = Path(tmp)
        store = await SqliteStore.open(folder / "bench.db")
        try:
            five = await open_engine(load_config(write_passthrough_config(folder, PLUGIN_COUNT)), store)
            empty_path = folder / "empty.yaml"
            empty_path.write_text("version: empty\nplugins: []\n")
            empty = await open_engine(load_config(empty_path), store)

            if profile:
                from pyinstrument import Profiler

                profiler = Profiler(interval=0.0001, async_mode="disabled")
                profiler.start()
                await measure(five, body_json, rings, warmup)
                profiler.stop()
                print(profiler.output_text(unicode=True, color=False, show_all=False))
                return

            print(
                f"ringd engine bench: {rings} rings after {warmup} warm-up, "
                f"body {len(body_json)} bytes JSON, Python {sys.version.split()[0]}, "
                f"loop {type(asyncio.get_running_loop()).__module__}"
            )
            empty_samples = await measure(empty, body_json, rings, warmup)
            five_samples = await measure(five, body_json, rings, warmup)
            print(line("empty PRE_FLIGHT ring", empty_samples))
            print(line(f"{PLUGIN_COUNT} passthrough plugins, total", five_samples))
            mean_total, p50_total, _ = summary(five_samples)
            mean_empty, p50_empty, _ = summary(empty_samples)
            per_mean = (mean_total - mean_empty) / PLUGIN_COUNT
            per_p50 = (p50_total - p50_empty) / PLUGIN_COUNT
            print(
                f"  {'per passthrough plugin':<34} mean {per_mean:8.2f} us   p50 {per_p50:8.2f} us"
                f"   (ring minus empty ring, / {PLUGIN_COUNT}; aim <= 5 us)"
            )
            first = five.generation.slots["pass0"].loaded.instance
            assert first is not None
            print(f"  metrics on: pass0 counted {first.stats['invocations']} invocations")

            # Before the default config, whose 50 ms cache lookup can time out on a busy machine and
            # end the run; the runaway below is stopped and its engine closed before that starts.
            await bench_wasm(folder, store, body_json, rings, warmup, 0.5 if rings < 1000 else 3.0)
            await bench_default_config(store, body_json, rings, warmup)
            await five.close(grace_s=1.0)
            await empty.close(grace_s=1.0)
            await scan_benches(store, folder, smoke=rings < 1000)
        finally:
            await store.close()


async def scan_benches(store: SqliteStore, folder: Path, *, smoke: bool) -> None:
    if smoke:
        await scanner_throughput(50_000, 1)
        await others_during_big_scan(store, 200_000, folder)
    else:
        await scanner_throughput(1_000_000, 3)
        await others_during_big_scan(store, 4_000_000, folder)


async def run_scan_only(smoke: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="ringd-bench-") as tmp:
        store = await SqliteStore.open(Path(tmp) / "bench.db")
        try:
            await scan_benches(store, Path(tmp), smoke=smoke)
        finally:
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rings", type=int, default=20_000, help="timed rings per case (default 20000)")
    parser.add_argument("--warmup", type=int, default=2_000, help="untimed rings first (default 2000)")
    parser.add_argument("--smoke", action="store_true", help="a few hundred rings: seconds, for make test")
    parser.add_argument("--loop", choices=["asyncio", "uvloop"], default="asyncio")
    parser.add_argument("--profile", action="store_true", help="pyinstrument over the 5-plugin ring")
    parser.add_argument("--scan-only", action="store_true", help="only the scanner figures")
    args = parser.parse_args()
    rings, warmup = (300, 50) if args.smoke else (args.rings, args.warmup)
    if args.scan_only:
        asyncio.run(run_scan_only(args.smoke))
        return
    if args.loop == "uvloop":
        import uvloop

        uvloop.run(run(rings, warmup, args.profile))
    else:
        asyncio.run(run(rings, warmup, args.profile))


if __name__ == "__main__":
    main()
