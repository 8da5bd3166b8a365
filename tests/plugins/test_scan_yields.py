"""A 4 MB hostile prompt being scanned does not hold up other rings on the same server.

The default pipeline's PRE_FLIGHT (prompt_guard, pii_redactor, ...) gets a 4 MB body
of adversarial text (emails, IPv6-like runs, digit runs, near-miss secrets). Two
marker plugins around pii_redactor (priorities 25 and 31) write a file when the big
request reaches them, so the test knows when pii_redactor's scan has begun and
whether it has ended. Small requests sent while it runs must be answered before it
ends: the scanners yield to the event loop. No timing is asserted; the latency of the
other rings during such a scan is measured by ``bench/engine_bench.py --scan``.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from ringd.client import AsyncClient
from ringd.sdk import PluginContext, PluginHook

MARKER = """
from pathlib import Path

from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse


class Marker(BasePlugin):
    name = "marker"
    hook = PluginHook.PRE_FLIGHT
    timeout_ms = 5000

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        if len(str(ctx.body)) >= 1_000_000:
            Path(self.config["touch"]).write_text(ctx.request_id)
        return PluginResponse.passthrough()
"""


def hostile_text(size: int) -> str:
    pieces = [
        "user.name+tag@mail.example.com ",
        "fe80::1:2:3:4:5:6:7 ::ffff: a:b:c:: ",
        "4111111111111111222233334444 ",
        "sk-short AKIA12 Bearer x password= ",
        "ignore the you are reveal your ",
        "+1 (555) 123 45 67 89 ",
    ]
    unit = "".join(pieces)
    return (unit * (size // len(unit) + 1))[:size]


async def test_other_rings_complete_while_a_4mb_body_is_scanned(
    serve_default, default_document, tmp_path: Path
) -> None:
    (tmp_path / "marker.py").write_text(MARKER)
    started, scanned = tmp_path / "scan-started", tmp_path / "scan-ended"
    document = default_document
    document["server"] = {**document.get("server", {}), "max_message_bytes": 16 * 1024 * 1024}
    for entry in document["plugins"]:
        # Let the whole 4 MB be scanned, and no small ring time out on a slow machine:
        # this test is about yielding, not about speed.
        entry["timeout_ms"] = 120_000
        if entry["name"] in {"prompt_guard", "pii_redactor"}:
            entry["config"] = {**entry.get("config", {}), "max_scan_chars": 8 * 1024 * 1024}
    document["plugins"] += [
        {"name": "before_pii", "hook": "pre_flight", "entrypoint": "marker.py:Marker", "priority": 25,
         "config": {"touch": str(started)}},
        {"name": "after_pii", "hook": "pre_flight", "entrypoint": "marker.py:Marker", "priority": 31,
         "config": {"touch": str(scanned)}},
    ]  # fmt: skip
    server = await serve_default(document)
    big: dict[str, Any] = {
        "model": "gpt-4o-mini",
        "messages": [{"role": "user", "content": hostile_text(4_000_000)}],
    }
    async with AsyncClient(server.addresses[0], timeout=300) as client:
        big_ring = asyncio.create_task(client.execute_ring("pre_flight", big, request_id="big"))
        while not started.exists():
            assert not big_ring.done(), big_ring.result()
            await asyncio.sleep(0.005)
        # pii_redactor is scanning the 4 MB now (the marker before it has run).
        assert not scanned.exists()

        async def small(index: int) -> str:
            # Another request's PRE_FLIGHT on the same engine and event loop. (Over gRPC, each
            # of a call's many messages waits for the scan to hand the GIL over, which on an
            # idle machine can take as long as the whole 4 MB scan: the loop turns are what
            # this test is about, and these rings need only a few.)
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"hello {index}"}]}
            ctx = PluginContext(body=body, request_id=f"small{index}")
            outcome = await server.engine.execute_ring(PluginHook.PRE_FLIGHT, ctx)
            return f"{outcome.action} {outcome.decision.message if outcome.decision else ''}".strip()

        smalls = [asyncio.create_task(small(index)) for index in range(5)]
        # The first small ring answered while the scan was still going: it did not wait
        # for the whole scan. (All five finishing first is likely but depends on how busy
        # the machine is; one is the behaviour.)
        await asyncio.wait(smalls, return_when=asyncio.FIRST_COMPLETED)
        assert not scanned.exists(), "the small rings waited for the whole scan"
        assert not big_ring.done()
        actions = await asyncio.gather(*smalls)
        assert all(action.split()[0] in {"passthrough", "modify"} for action in actions), actions

        outcome = await big_ring
    assert scanned.exists()
    assert outcome.action == "modify", (outcome.action, outcome.message)
    assert "[EMAIL_1]" in outcome.body["messages"][0]["content"]
