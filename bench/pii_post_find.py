"""pii_redactor's cost besides the scan: the plugin timed with its findings computed beforehand.

For each adversarial corpus of ``bench/engine_bench.py`` (1 MB each), the plugin
(``mode: mask``, ``restore: true``, a ``pii_key``, as the default config and
``engine_bench.py --scan-only`` run it) is timed three ways, best of ``--repeat`` runs,
in ms per corpus:

* ``whole``: as it runs;
* ``besides find``: ``Detector.find_window`` answers from a record of what it found in each
  window (a scan costing nothing): the windows' glue, counting, placeholders, the masked
  texts, the new body and sealing are left;
* ``after scan``: ``find_all_yielding`` answers at once with the findings: only the work
  after the scan is left.

With a scan costing a few ms per MB, 20 MB/s needs ``besides find`` under ~40 ms.

    .venv/bin/python bench/pii_post_find.py [--size N] [--repeat N] [--profile CORPUS]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ringd.plugins import _detect, pii_redactor
from ringd.plugins._detect import Detector, Finding
from ringd.sdk import PluginContext

sys.path.insert(0, str(Path(__file__).resolve().parent))
from engine_bench import adversarial_corpora


@contextmanager
def patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


async def best_ms(redactor: pii_redactor.PiiRedactor, text: str, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        ctx = PluginContext(body={"messages": [{"role": "user", "content": text}]}, request_id="r")
        started = time.perf_counter()
        await redactor.execute(ctx)
        best = min(best, time.perf_counter() - started)
    return best * 1e3


async def recorded_finds(
    redactor: pii_redactor.PiiRedactor, text: str
) -> dict[tuple[int, int], list[Finding]]:
    """What ``Detector.find_window`` answers for each window of ``text``, by its bounds."""
    record: dict[tuple[int, int, int, int], list[Finding]] = {}
    real = Detector.find_window

    def find_window(self: Detector, text: str, low: int, high: int, start: int, stop: int) -> list[Finding]:
        record[low, high, start, stop] = found = real(self, text, low, high, start, stop)
        return found

    with patched(Detector, "find_window", find_window):
        await redactor.execute(PluginContext(body={"messages": [{"role": "user", "content": text}]}))
    return record


def replay(record: dict[tuple[int, int, int, int], list[Finding]]) -> Callable[..., list[Finding]]:
    def find_window(_self: Detector, _text: str, low: int, high: int, start: int, stop: int) -> list[Finding]:
        return list(record[low, high, start, stop])

    return find_window


def given(found: list[list[Finding]]) -> Callable[..., Any]:
    async def find_all(_detector: Detector, _texts: Sequence[str], *_: int) -> list[list[Finding]]:
        return [list(findings) for findings in found]

    return find_all


async def run(size: int, repeat: int, profile: str | None) -> None:
    redactor = pii_redactor.PiiRedactor({"mode": "mask", "restore": True, "pii_key": "00" * 32})
    corpora = adversarial_corpora(size)
    if profile is not None:
        import cProfile
        import pstats

        text = corpora[profile]
        found = await _detect.find_all_yielding(redactor.detector, [text])
        profiler = cProfile.Profile()
        with patched(pii_redactor, "find_all_yielding", given(found)):
            profiler.enable()
            await best_ms(redactor, text, repeat)
            profiler.disable()
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
        return
    print(f"pii_redactor on {size / 1e6:.1f} MB corpora, best of {repeat}; ms per corpus:")
    print(f"  {'corpus':<18}{'findings':>10}{'whole':>10}{'besides find':>14}{'after scan':>12}")
    for corpus, text in corpora.items():
        found = await _detect.find_all_yielding(redactor.detector, [text])
        whole = await best_ms(redactor, text, repeat)
        with patched(Detector, "find_window", replay(await recorded_finds(redactor, text))):
            besides = await best_ms(redactor, text, repeat)
        with patched(pii_redactor, "find_all_yielding", given(found)):
            after = await best_ms(redactor, text, repeat)
        count = sum(map(len, found))
        print(f"  {corpus:<18}{count:>10}{whole:>10.1f}{besides:>14.1f}{after:>12.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=1_000_000, help="characters per corpus")
    parser.add_argument("--repeat", type=int, default=7, help="runs per figure, the best kept")
    parser.add_argument("--profile", default=None, help="cProfile the work after the scan on one corpus")
    args = parser.parse_args()
    asyncio.run(run(args.size, args.repeat, args.profile))


if __name__ == "__main__":
    main()
