"""``ringd serve --workers N``: N processes sharing the listen port (SO_REUSEPORT)."""

from __future__ import annotations

import argparse
import sys

from ringd.server.config import RingdConfig


def serve_workers(args: argparse.Namespace, config: RingdConfig) -> int:
    """Run ``args.workers`` server processes; not available yet."""
    _ = config
    print(f"ringd: --workers {args.workers} is not supported yet; run with --workers 1", file=sys.stderr)
    return 2
