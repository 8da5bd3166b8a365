"""Wall-clock helpers for tests of rate_limiter's fixed windows (minutes of Unix time)."""

from __future__ import annotations

import asyncio
import time


async def early_in_a_window(window_s: float = 60.0, margin_s: float = 3.0) -> None:
    """Return at once when at least ``margin_s`` of the current window is left, else wait for
    the next window: requests sent within ``margin_s`` then fall in one window."""
    left_s = window_s - time.time() % window_s
    if left_s < margin_s:
        await asyncio.sleep(left_s + 0.05)
