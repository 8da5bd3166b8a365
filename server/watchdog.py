"""Event-loop stall watchdog: asyncio cannot preempt a plugin that blocks the loop
(``time.sleep``, a CPU loop), so a thread notices the loop has stopped turning and
blames the plugin whose code is running (``Engine.running``).

A stall is counted once per episode in the plugin's ``stalls`` stat and logged on
``ringd.watchdog``; set ``run_in_thread: true`` on such a plugin to move it off the loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time

from ringd.server.engine import Engine

_log = logging.getLogger("ringd.watchdog")


class StallWatchdog:
    """Watches one event loop from a daemon thread; ``threshold_s`` is the stall length."""

    def __init__(self, engine: Engine, threshold_s: float) -> None:
        self._engine = engine
        self._threshold = threshold_s
        self._interval = max(threshold_s / 4, 0.005)
        self._beat = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self.stalls = 0

    def start(self) -> None:
        """Start the heartbeat on the running loop and the watching thread."""
        self._loop = asyncio.get_running_loop()
        self._heartbeat()
        self._thread = threading.Thread(target=self._watch, name="ringd-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._handle is not None:
            self._handle.cancel()
        if self._thread is not None:
            self._thread.join(timeout=1.0)

    def _heartbeat(self) -> None:
        self._beat = time.monotonic()
        if self._loop is not None and not self._stop.is_set():
            self._handle = self._loop.call_later(self._interval, self._heartbeat)

    def _watch(self) -> None:
        stalled_since: float | None = None
        culprit_name = ""
        while not self._stop.wait(self._interval):
            lag = time.monotonic() - self._beat
            if lag > self._threshold + self._interval:
                if stalled_since is None:
                    stalled_since = self._beat
                    self.stalls += 1
                    culprit = self._engine.running
                    if culprit is not None:
                        culprit.metrics.stalls += 1
                        culprit_name = culprit.entry.name
                        _log.warning(
                            "event loop blocked for over %.0f ms by plugin %r (ring %s); "
                            "make it async or set run_in_thread: true",
                            lag * 1000,
                            culprit_name,
                            culprit.ring.value,
                        )
                    else:
                        culprit_name = ""
                        _log.warning("event loop blocked for over %.0f ms outside any plugin", lag * 1000)
            elif stalled_since is not None:
                blocked_ms = (self._beat - stalled_since) * 1000
                where = f" by plugin {culprit_name!r}" if culprit_name else ""
                _log.warning("event loop ran again after about %.0f ms blocked%s", blocked_ms, where)
                stalled_since = None
