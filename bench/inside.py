"""Where a call's CPU goes inside a running ringd under load (issue 17's profile, in figures).

Starts ``ringd serve`` on the passthrough benchmark config with ``bench/_inside`` on its
PYTHONPATH (its ``sitecustomize`` times the servicer's stages with the event loop
thread's CPU clock), and a bare grpc.aio echo server, drives both with h2load as `make
bench` does, and prints per call: the server's whole CPU time (every thread, from /proc),
the handler's (decode, the stages below, encode, serialise), and each stage's.

    .venv/bin/python bench/inside.py [--cases a,b,d] [--requests 20000]

The stages only add ``thread_time_ns`` readings (about 0.2 us each, twelve per call), so
the figures are those of the server as shipped to within about 3 us per call.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import grpc_bench as gb  # noqa: E402

CASES = {
    "a": ("a. PRE_FLIGHT, 5 passthrough, 2 KB body_json", gb.pb.PLUGIN_HOOK_PRE_FLIGHT, False),
    "b": ("b. the same, body as Struct", gb.pb.PLUGIN_HOOK_PRE_FLIGHT, True),
    "d": ("d. BACKGROUND acknowledgement (+ its ring later)", gb.pb.PLUGIN_HOOK_BACKGROUND, False),
}
STAGES = ("context", "bind", "ring", "encode")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", default="a,b,d")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    requests = 600 if args.smoke else args.requests
    load = {"requests": requests, "clients": 4, "streams": 16}
    body = gb.chat_body(2048)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "stages.jsonl"
        env = dict(
            os.environ,
            PYTHONPATH=str(HERE / "_inside"),
            RINGD_INSIDE_OUT=str(out),
            RINGD_INSIDE_EVERY=str(requests),
        )
        config = HERE / "passthrough.yaml"
        echo_cmd = [sys.executable, str(HERE / "echo_server.py")]
        print(f"h2load: {requests} requests, 4 connections x 16 streams; microseconds of CPU per call")
        print(f"{'case':52} {'echo':>6} {'ringd':>6} {'handler':>8} " + " ".join(f"{s:>8}" for s in STAGES))
        for case in args.cases.split(","):
            title, hook, struct_form = CASES[case]
            payload = gb.ring_request(hook, body, struct_form=struct_form)
            out.unlink(missing_ok=True)
            # A server per case, warmed up by exactly one dump's worth of calls: the figures
            # are then those of the measured run alone.
            with (
                gb.process(echo_cmd, cwd=HERE) as echo,
                gb.ringd(gb.ringd_args(config), cwd=HERE, env=env) as ringd,
            ):
                gb.h2load(ringd, "ExecuteRing", payload, **load)
                echo_run = gb.h2load(echo, "ExecuteRing", payload, **load)
                ringd_run = gb.h2load(ringd, "ExecuteRing", payload, **load)
            lines = out.read_text().splitlines() if out.exists() else []
            if not lines:
                print(f"{title:52} no stage figures (the ring did not finish {requests} calls)")
                continue
            totals = json.loads(lines[-1])
            calls = totals["calls"]
            stages = " ".join(f"{totals[s] / calls / 1000:8.1f}" for s in STAGES)
            print(
                f"{title:52} {echo_run.cpu_us:6.0f} {ringd_run.cpu_us:6.0f} "
                f"{totals['call'] / calls / 1000:8.1f} {stages}"
            )
    print(
        "handler: the servicer's whole call on the loop thread (decode, admission, the stages, "
        "serialising); for d the ring runs later, off the call (its column is that ring's cost)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
