"""Event-loop stall watchdog: asyncio cannot preempt a plugin that blocks the loop
(``time.sleep``, a CPU loop), so a thread notices the loop has stopped turning and
blames the plugin whose code is running (``Engine.running``).

A stall is counted once per episode in the plugin's ``stalls`` stat and logged on
``ringd.watchdog``; set ``run_in_thread: true`` on such a plugin to move it off the loop.

Each stall is told apart by how much CPU the loop's thread got while it was stuck
(its thread CPU clock against the wall clock): code of ours or a plugin's that spins
burns about a whole CPU; a blocking call (``time.sleep``, synchronous I/O) or a
process starved of CPU (a container's CPU quota used up, other processes on the
machine) burns next to none. Without a plugin to blame, a loop that got little CPU
is reported as CPU starvation, not as a block.

Warnings are rate-limited: in each ``report_interval_s`` the first stall of each kind
(each plugin, ringd's own code, CPU starvation) is logged at once; the others are
counted and logged as one summary line when the interval is over (or at shutdown), so
a starved process logs a line or two a minute, not one per stall.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from ringd.server.engine import Engine

_log = logging.getLogger("ringd.watchdog")

BUSY_SHARE = 0.5
"""A stalled loop thread that got at least this share of a CPU was busy running code."""


def _thread_cpu_clock(thread_id: int) -> Callable[[], float]:
    """CPU seconds of thread ``thread_id`` (Linux and most Unix); the process's as a fallback."""
    try:
        clock_id = time.pthread_getcpuclockid(thread_id)
        time.clock_gettime(clock_id)
    except (AttributeError, OSError):  # no per-thread clock here: the whole process is close enough
        return time.process_time
    return lambda: time.clock_gettime(clock_id)


class StallWatchdog:
    """Watches one event loop from a daemon thread; ``threshold_s`` is the stall length."""

    def __init__(self, engine: Engine, threshold_s: float, *, report_interval_s: float = 60.0) -> None:
        self._engine = engine
        self._threshold = threshold_s
        self._interval = max(threshold_s / 4, 0.005)
        self._report_interval = report_interval_s
        self._beat = time.monotonic()
        self._beat_cpu = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._loop_cpu: Callable[[], float] = time.process_time
        self._lock = threading.Lock()
        self._window_start = 0.0
        self._reported: set[str] = set()  # kinds of stall logged in the current interval
        self._held: Counter[str] = Counter()  # stalls not logged in this interval, by kind
        self.stalls = 0
        self.starved = 0
        """Stalls with no plugin to blame in which the loop got little CPU (starvation)."""

    def start(self) -> None:
        """Start the heartbeat on the running loop and the watching thread."""
        self._loop = asyncio.get_running_loop()
        self._loop_cpu = _thread_cpu_clock(threading.get_ident())
        self._window_start = time.monotonic()
        self._heartbeat()
        self._thread = threading.Thread(target=self._watch, name="ringd-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        self._flush(time.monotonic())

    def _heartbeat(self) -> None:
        # The CPU clock before the wall clock: the watcher pairs them, and a beat it
        # reads half-written errs towards "busy", never towards "starved".
        self._beat_cpu = self._loop_cpu()
        self._beat = time.monotonic()
        if self._loop is not None and not self._stop.is_set():
            self._handle = self._loop.call_later(self._interval, self._heartbeat)

    def _watch(self) -> None:
        stalled = False
        while not self._stop.wait(self._interval):
            now = time.monotonic()
            beat, beat_cpu = self._beat, self._beat_cpu
            lag = now - beat
            if lag > self._threshold + self._interval:
                if not stalled:
                    stalled = True
                    share = max(0.0, self._loop_cpu() - beat_cpu) / lag if lag > 0 else 1.0
                    self._on_stall(lag, share, now)
            else:
                stalled = False
            if now - self._window_start >= self._report_interval:
                self._flush(now)

    def _on_stall(self, lag: float, share: float, now: float) -> None:
        self.stalls += 1
        culprit = self._engine.running
        busy = share >= BUSY_SHARE
        if culprit is not None:
            culprit.metrics.stalls += 1
            kind = f"plugin {culprit.entry.name!r}"
            how = (
                "running code on the loop"
                if busy
                else "waiting without using CPU (a blocking call such as time.sleep or sync I/O)"
            )
            message = (
                f"event loop blocked for over {lag * 1000:.0f} ms by plugin {culprit.entry.name!r} "
                f"(ring {culprit.ring.value}), {how}; the loop got {share:.0%} of a CPU; "
                "make it async or set run_in_thread: true"
            )
        elif busy:
            kind = "ringd's own code"
            message = (
                f"event loop busy for over {lag * 1000:.0f} ms outside any plugin "
                f"(it got {share:.0%} of a CPU): ringd's own code or a library ran that long"
            )
        else:
            self.starved += 1
            kind = "CPU starvation"
            message = (
                f"event loop starved for over {lag * 1000:.0f} ms: it got only {share:.0%} of a CPU "
                "and no plugin was running, so the process was not scheduled (CPU limit or "
                "throttling, other processes on the machine); no plugin is to blame"
            )
        with self._lock:
            if kind in self._reported:
                self._held[kind] += 1
                return
            self._reported.add(kind)
        _log.warning("%s", message)

    def _flush(self, now: float) -> None:
        """Log the stalls held back in the interval that ends now, and start the next."""
        with self._lock:
            held, self._held = self._held, Counter()
            self._reported = set()
            started, self._window_start = self._window_start, now
        if held:
            parts = ", ".join(f"{count} by {kind}" for kind, count in held.most_common())
            _log.warning(
                "%d more event-loop stalls in the last %.0f s, not logged one by one: %s",
                sum(held.values()),
                now - started,
                parts,
            )
