"""pii_redactor's cost after the scan: the plugin timed with its findings computed beforehand.

For each adversarial corpus of ``bench/engine_bench.py`` (1 MB each), the findings of
``find_all_yielding`` are computed once; the plugin (``mode: mask``, ``restore: true``,
a ``pii_key``, as the default config and ``engine_bench.py --scan-only`` run it) is then
timed with the scan replaced by those findings: what is left is the work after the scan
(counting, placeholders, the masked texts, the new body, sealing). Best of ``--repeat``
runs, in ms per corpus; the budget after the scan is about 30 ms per MB (20 MB/s with
a native scan of a few ms).

    .venv/bin/python bench/pii_post_find.py [--size N] [--repeat N] [--profile CORPUS]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ringd.plugins import pii_redactor
from ringd.plugins._detect import Detector, Finding, find_all_yielding
from ringd.sdk import PluginContext

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_bench import adversarial_corpora


def plugin() -> pii_redactor.PiiRedactor:
    return pii_redactor.PiiRedactor({"mode": "mask", "restore": True, "pii_key": "00" * 32})


async def timed(redactor: pii_redactor.PiiRedactor, text: str, repeat: int) -> tuple[float, float]:
    """(best ms of the whole plugin, best ms of the plugin with the findings given)."""
    found = await find_all_yielding(redactor.detector, [text])

    async def given(_detector: Detector, _texts: Sequence[str], *_: int) -> list[list[Finding]]:
        return [list(findings) for findings in found]

    whole = post = float("inf")
    for _ in range(repeat):
        ctx = PluginContext(body={"messages": [{"role": "user", "content": text}]}, request_id="r")
        started = time.perf_counter()
        await redactor.execute(ctx)
        whole = min(whole, time.perf_counter() - started)
    original = pii_redactor.find_all_yielding
    pii_redactor.find_all_yielding = given
    try:
        for _ in range(repeat):
            ctx = PluginContext(body={"messages": [{"role": "user", "content": text}]}, request_id="r")
            started = time.perf_counter()
            await redactor.execute(ctx)
            post = min(post, time.perf_counter() - started)
    finally:
        pii_redactor.find_all_yielding = original
    return whole * 1e3, post * 1e3


async def run(size: int, repeat: int, profile: str | None) -> None:
    redactor = plugin()
    corpora = adversarial_corpora(size)
    if profile is not None:
        import cProfile
        import pstats

        text = corpora[profile]
        found = await find_all_yielding(redactor.detector, [text])

        async def given(_detector: Detector, _texts: Sequence[str], *_: int) -> list[list[Finding]]:
            return [list(findings) for findings in found]

        pii_redactor.find_all_yielding = given
        profiler = cProfile.Profile()
        for _ in range(repeat):
            ctx = PluginContext(body={"messages": [{"role": "user", "content": text}]}, request_id="r")
            profiler.enable()
            await redactor.execute(ctx)
            profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return
    print(f"pii_redactor after the scan, {size / 1e6:.1f} MB corpora, best of {repeat}; ms per corpus:")
    print(f"  {'corpus':<18}{'findings':>10}{'whole':>10}{'after scan':>12}")
    for corpus, text in corpora.items():
        count = sum(len(f) for f in await find_all_yielding(redactor.detector, [text]))
        whole, post = await timed(redactor, text, repeat)
        print(f"  {corpus:<18}{count:>10}{whole:>10.1f}{post:>12.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--profile", choices=None, default=None, help="cProfile one corpus's post-scan work")
    args = parser.parse_args()
    asyncio.run(run(args.size, args.repeat, args.profile))


if __name__ == "__main__":
    main()
