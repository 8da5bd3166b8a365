"""Headers on blocks: PluginResponse.block(headers=...) reaches the gateway in BlockInfo.headers.

The SDK checks them at construction; a real server encodes them; the Python client
exposes them; the default pipeline's rate limiter sends Retry-After on its 429.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from ringd.client import AsyncClient
from ringd.sdk import PluginAction, PluginResponse, PluginResponseError
from ringd.server.app import build_server
from ringd.server.config import default_config, load_config
from support.clock import early_in_a_window


def test_block_carries_headers() -> None:
    response = PluginResponse.block(429, "rate_limited", "slow down", headers={"Retry-After": "30"})

    assert response.action is PluginAction.BLOCK
    assert response.headers == {"Retry-After": "30"}
    assert PluginResponse.block(403).headers is None


@pytest.mark.parametrize(
    ("headers", "problem"),
    [
        ({"Retry After": "1"}, "header name 'Retry After' is not an HTTP token"),
        ({"": "1"}, "header name '' is not an HTTP token"),
        ({"X-Evil": "1\r\nSet-Cookie: a=b"}, "header 'X-Evil' has CR, LF or NUL in its value"),
        ({"Retry-After": 30}, "header 'Retry-After' has a int value, not a string"),
        (["Retry-After"], "headers must be a dict of strings, got list"),
    ],
)
def test_bad_headers_are_refused_naming_the_header(headers: object, problem: str) -> None:
    # Construction is lenient (LLMProxy's); the ring checks what it serves.
    response = PluginResponse.block(429, "rate_limited", headers=headers)  # type: ignore[arg-type]
    with pytest.raises(PluginResponseError, match=problem.replace("(", r"\(")):
        response.validate()


def test_headers_belong_to_blocks_only() -> None:
    with pytest.raises(PluginResponseError, match="headers are for BLOCK responses only, not MODIFY"):
        PluginResponse(PluginAction.MODIFY, body={}, headers={"X-A": "1"}).validate()
    with pytest.raises(PluginResponseError, match="not PASSTHROUGH"):
        PluginResponse(PluginAction.PASSTHROUGH, headers={"X-A": "1"}).validate()


PLUGIN = """
from ringd.sdk import BasePlugin, PluginHook, PluginResponse


class Teapot(BasePlugin):
    name = "teapot"
    hook = PluginHook.INGRESS

    async def execute(self, ctx):
        return PluginResponse.block(418, "teapot", "short and stout", headers={"X-Brew": "earl-grey"})
"""


async def test_the_python_client_gets_a_plugins_block_headers(tmp_path: Path) -> None:
    (tmp_path / "teapot.py").write_text(PLUGIN)
    (tmp_path / "ringd.yaml").write_text(
        "store: ringd.db\nplugins:\n  - {name: teapot, entrypoint: teapot.py:Teapot}\n"
    )
    server = await build_server(load_config(tmp_path / "ringd.yaml"), listen=["127.0.0.1:0"])
    try:
        async with AsyncClient(server.addresses[0], timeout=10) as client:
            single = await client.execute_ring("ingress", {"model": "m"})
            several = await client.execute_rings(["ingress", "pre_flight"], {"model": "m"})
    finally:
        await server.stop(2)

    assert (single.action, single.status_code, single.headers) == ("block", 418, {"X-Brew": "earl-grey"})
    assert single.to_dict()["headers"] == {"X-Brew": "earl-grey"}
    assert several[-1].headers == {"X-Brew": "earl-grey"}


async def test_the_default_rate_limiter_sends_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default config's store lands here
    server = await build_server(default_config(), listen=["127.0.0.1:0"])
    try:
        async with AsyncClient(server.addresses[0], timeout=10) as client:
            await early_in_a_window()  # the demo key's four requests in one minute
            answers = [
                await client.execute_ring(
                    "ingress", {"model": "m"}, headers={"authorization": "Bearer ringd-demo-key"}
                )
                for _ in range(4)
            ]
    finally:
        await server.stop(2)

    assert [answer.action for answer in answers] == ["passthrough"] * 3 + ["block"]
    refused = answers[-1]
    assert refused.status_code == 429
    assert set(refused.headers) == {"Retry-After"}
    assert refused.headers["Retry-After"] == str(refused.metadata["retry_after_s"])
    assert 1 <= int(refused.headers["Retry-After"]) <= 60
    assert answers[0].headers == {}
