"""The SDK's contract as a plugin author meets it: PluginResponse rules, context and state."""

from __future__ import annotations

import json
import logging

import pytest
import ringd.sdk
from ringd.sdk import (
    BasePlugin,
    PluginAction,
    PluginContext,
    PluginHook,
    PluginResponse,
    PluginResponseError,
    PluginState,
    RequestInfo,
)


@pytest.mark.parametrize("action", ["banana", "delete", "PASS", "", None, 3])
def test_invalid_action_raises_with_llmproxy_message(action: object) -> None:
    with pytest.raises(PluginResponseError) as raised:
        PluginResponse(action)  # type: ignore[arg-type]
    assert str(raised.value) == (
        f"Invalid PluginResponse action '{action}'. Must be one of: passthrough, modify, block, cache_hit"
    )


@pytest.mark.parametrize(
    ("text", "kwargs", "expected"),
    [
        ("passthrough", {}, PluginAction.PASSTHROUGH),
        ("modify", {"body": {"model": "m"}}, PluginAction.MODIFY),
        ("block", {"status_code": 429}, PluginAction.BLOCK),
        ("cache_hit", {"response": {"id": "c"}}, PluginAction.CACHE_HIT),
    ],
)
def test_string_actions_are_coerced_to_the_enum(text: str, kwargs: dict, expected: PluginAction) -> None:
    response = PluginResponse(text, **kwargs)  # type: ignore[arg-type]
    assert response.action is expected


@pytest.mark.parametrize("code", [200, 302, 399, 0, -1])
def test_block_below_400_becomes_403_with_a_warning(caplog: pytest.LogCaptureFixture, code: int) -> None:
    with caplog.at_level(logging.WARNING, logger="ringd.sdk"):
        response = PluginResponse.block(status_code=code, error_type="nope", message="no")
    assert response.status_code == 403
    assert response.error_type == "nope"
    assert response.message == "no"
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert str(code) in warnings[0].getMessage()


def test_block_at_or_above_400_is_kept_without_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ringd.sdk"):
        codes = [PluginResponse.block(code).status_code for code in (400, 429, 451, 503)]
    assert codes == [400, 429, 451, 503]
    assert not caplog.records


def test_block_defaults_to_403() -> None:
    response = PluginResponse.block()
    assert response.action is PluginAction.BLOCK
    assert response.status_code == 403


def test_block_by_hand_below_400_is_corrected_too(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="ringd.sdk"):
        response = PluginResponse("block", status_code=204)  # type: ignore[arg-type]
    assert response.status_code == 403
    assert caplog.records


@pytest.mark.parametrize("body", ["text", ["a"]])
def test_modify_with_a_body_that_is_not_a_dict_is_caught_when_served(body: object) -> None:
    response = PluginResponse.modify(body=body)  # type: ignore[arg-type]
    with pytest.raises(PluginResponseError, match="MODIFY"):
        response.validate()


def test_modify_without_a_body_is_valid_and_keeps_the_body() -> None:
    response = PluginResponse(action="modify")  # type: ignore[arg-type]
    assert response.action is PluginAction.MODIFY
    assert response.body is None
    response.validate()


def test_modify_keeps_body_and_message() -> None:
    response = PluginResponse.modify(body={"messages": []}, message="trimmed")
    assert response.action is PluginAction.MODIFY
    assert response.body == {"messages": []}
    assert response.message == "trimmed"


@pytest.mark.parametrize("answer", [None, "cached text", 42])
def test_cache_hit_without_a_response_dict_is_accepted_then_caught_when_served(answer: object) -> None:
    response = PluginResponse.cache_hit(response=answer)  # type: ignore[arg-type]
    assert response.action is PluginAction.CACHE_HIT
    with pytest.raises(PluginResponseError, match="CACHE_HIT"):
        response.validate()


def test_cache_hit_keeps_the_response() -> None:
    response = PluginResponse.cache_hit(response={"id": "chatcmpl-1"})
    assert response.action is PluginAction.CACHE_HIT
    assert response.response == {"id": "chatcmpl-1"}


def test_passthrough_carries_no_payload() -> None:
    response = PluginResponse.passthrough()
    assert response.action is PluginAction.PASSTHROUGH
    assert (response.body, response.response, response.status_code) == (None, None, 200)


def test_plugin_response_error_is_a_value_error() -> None:
    # Plugins written against LLMProxy may catch ValueError around response building.
    assert issubclass(PluginResponseError, ValueError)


def test_context_and_state_construct_with_defaults() -> None:
    ctx = PluginContext()
    assert ctx.body == {}
    assert ctx.metadata == {}
    assert ctx.session_id == "default"
    assert isinstance(ctx.state, PluginState)
    assert ctx.response is None
    assert ctx.request == RequestInfo()
    assert ctx.request_id == ""
    assert ctx.error is None
    assert ctx.stop_chain is False
    state = PluginState()
    assert (state.cache, state.metrics, state.config, state.extra) == (None, None, {}, {})


def test_defaults_are_not_shared_between_instances() -> None:
    first, second = PluginContext(), PluginContext()
    first.body["x"] = 1
    first.metadata["y"] = 2
    first.state.extra["store"] = object()
    first.request.headers["a"] = "b"
    assert second.body == {}
    assert second.metadata == {}
    assert second.state.extra == {}
    assert second.request.headers == {}


def test_context_and_state_take_keywords() -> None:
    state = PluginState(config={"env": "test"}, cache={"k": 1}, metrics={"m": 2}, extra={"store": "s"})
    request = RequestInfo(
        method="POST",
        path="/v1/chat/completions",
        headers={"authorization": "Bearer x"},
        client_address="10.0.0.1",
    )
    ctx = PluginContext(
        body={"model": "gpt"},
        metadata={"_k": 1},
        session_id="sess",
        state=state,
        response={"id": "r"},
        request=request,
        request_id="req-1",
        error="bad",
        stop_chain=True,
    )
    assert ctx.body == {"model": "gpt"}
    assert ctx.metadata == {"_k": 1}
    assert ctx.session_id == "sess"
    assert ctx.state is state
    assert ctx.state.extra["store"] == "s"
    assert ctx.response == {"id": "r"}
    assert ctx.request.headers["authorization"] == "Bearer x"
    assert ctx.request_id == "req-1"
    assert (ctx.error, ctx.stop_chain) == ("bad", True)


def test_hook_values_match_llmproxy() -> None:
    assert [hook.value for hook in PluginHook] == [
        "ingress",
        "pre_flight",
        "routing",
        "post_flight",
        "background",
    ]
    assert [action.value for action in PluginAction] == [
        "passthrough",
        "modify",
        "block",
        "cache_hit",
    ]


def test_base_plugin_config_is_a_dict_never_none() -> None:
    class Plain(BasePlugin):
        name = "plain"

    assert Plain().config == {}
    assert Plain(None).config == {}
    given = {"limit": 3}
    plugin = Plain(given)
    assert plugin.config == {"limit": 3}
    plugin.config["limit"] = 4
    assert given == {"limit": 3}, "the plugin got its own copy of the entry's config"


def test_stats_of_a_fresh_plugin_are_zero() -> None:
    stats = BasePlugin().stats
    for key in ("invocations", "errors", "blocks", "timeouts", "total_latency_ms", "avg_latency_ms"):
        assert stats[key] == 0
    for key in ("p50_latency_ms", "p95_latency_ms", "p99_latency_ms"):
        assert stats[key] == 0.0


def test_sdk_imports_no_grpc_or_protobuf() -> None:
    import subprocess
    import sys

    code = (
        "import sys, ringd.sdk; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('grpc', 'google')]; "
        "print(','.join(bad))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


def test_public_surface_is_declared() -> None:
    for name in ringd.sdk.__all__:
        assert hasattr(ringd.sdk, name), name
    assert {"BasePlugin", "PluginResponse", "PluginContext", "PluginState"} <= set(ringd.sdk.__all__)


# ----------------------------------------------------------------- LLMProxy parity


def test_fields_take_llmproxy_positions() -> None:
    state = PluginState(None, None, {"region": "eu"}, {"store": "s"})
    assert (state.config, state.extra) == ({"region": "eu"}, {"store": "s"})
    request = RequestInfo("POST", "/v1/chat/completions")
    ctx = PluginContext(request, {"model": "m"}, {"id": "r"}, {"k": 1}, "s-1", "err", True, state)
    assert (ctx.request, ctx.body, ctx.metadata, ctx.session_id) == (request, {"model": "m"}, {"k": 1}, "s-1")
    assert (ctx.error, ctx.stop_chain, ctx.state) == ("err", True, state)
    assert ctx.response == {"id": "r"}
    response = PluginResponse("block", 429, "rate_limited", "slow down")
    assert (response.status_code, response.error_type, response.message) == (429, "rate_limited", "slow down")


def test_plugin_action_is_a_string() -> None:
    block = PluginResponse.block().action
    assert isinstance(block, str)
    assert block == "block"
    assert f"{block}" == "block"
    assert str(block) == "block"
    assert {"block": 1}[block] == 1
    assert block in {"block", "cache_hit"}
    assert json.dumps({"action": block}) == '{"action": "block"}'


def test_base_plugin_defaults_logger_stats_and_repr() -> None:
    class Bare(BasePlugin):
        pass

    class NoSuper(BasePlugin):
        name = "no_super"

        def __init__(self, config: dict | None = None) -> None:
            self.config = config or {}

    bare = Bare()
    assert (Bare.name, Bare.hook, Bare.version, Bare.author, Bare.timeout_ms) == (
        "unnamed_plugin",
        PluginHook.BACKGROUND,
        "0.0.1",
        "unknown",
        50,
    )
    assert bare.logger is logging.getLogger("plugin.unnamed_plugin")
    assert NoSuper().logger is logging.getLogger("plugin.no_super")
    stats = bare.stats
    assert {"name", "version", "invocations", "errors", "blocks", "avg_latency_ms"} <= stats.keys()
    assert (stats["name"], stats["version"], stats["invocations"]) == ("unnamed_plugin", "0.0.1", 0)
    assert repr(bare) == "<Plugin unnamed_plugin v0.0.1 hook=background>"


def test_request_reads_like_starlette() -> None:
    request = RequestInfo(headers={"Authorization": "Bearer k"}, client_address="[2001:db8::1]:443")
    assert request.headers.get("authorization") == request.headers["AUTHORIZATION"] == "Bearer k"
    assert "Authorization" in request.headers
    assert request.client is not None
    assert (request.client.host, request.client.port) == ("2001:db8::1", 443)
    assert RequestInfo(client_address="10.0.0.1").client == ("10.0.0.1", 0)
    assert RequestInfo().client is None
    assert RequestInfo(path="/v1/models").url.path == "/v1/models"
