"""The ``ringd`` command's client commands against a running server, and ``check-config``.

Client commands print JSON on stdout; a failed call exits non-zero with the gRPC
status name and message on stderr.
"""

from __future__ import annotations

import asyncio
import json

from support.rpc import BIN, run
from support.workspace import entry

RINGD = BIN / "ringd"
TOKEN = "cli-admin-token"


async def ringd(*args: str) -> tuple[int, str, str]:
    return await run(RINGD, *args)


async def test_ring_prints_the_outcome_as_json(serve):
    running = await serve(
        [
            entry("tenant", "ingress", config={"metadata_from_header": {"x-tenant": "tenant"}}),
            entry(
                "appender", config={"append_message": "be brief", "body_from_metadata": {"tenant": "user"}}
            ),
            entry(
                "guard",
                config={"action": "block", "status": 429, "error_type": "rate_limited", "message": "wait"},
            ),
        ]
    )
    body = '{"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}'

    (code, out, err), (unix_code, unix_out, unix_err), (ingress_code, ingress_out, _) = await asyncio.gather(
        ringd(
            "ring",
            "pre_flight",
            "--body",
            body,
            "--metadata",
            '{"tenant": "acme"}',
            "--target",
            running.address,
        ),
        ringd("ring", "pre_flight", "--body", body, "--target", running.unix_address),
        ringd("ring", "ingress", "--body", body, "--header", "X-Tenant: globex", "--target", running.address),
    )

    assert code == 0, err  # a block is the ring's verdict, not a failed call
    outcome = json.loads(out)
    assert outcome["ring"] == "pre_flight"
    assert outcome["action"] == "block"
    assert (outcome["status_code"], outcome["error_type"], outcome["message"]) == (
        429,
        "rate_limited",
        "wait",
    )
    assert outcome["decided_by"] == "guard"
    assert outcome["body"]["messages"][-1] == {"role": "system", "content": "be brief"}
    assert outcome["body"]["user"] == "acme"
    assert outcome["metadata"] == {"tenant": "acme"}
    assert [(r["plugin"], r["outcome"], r["action"]) for r in outcome["results"]] == [
        ("appender", "ok", "passthrough"),
        ("guard", "ok", "block"),
    ]
    assert all(r["latency_ms"] > 0 for r in outcome["results"])
    assert (outcome["config_version"], outcome["generation"]) == ("v1", 1)

    assert unix_code == 0, unix_err
    assert json.loads(unix_out)["action"] == "block"
    assert ingress_code == 0
    assert json.loads(ingress_out)["metadata"] == {"tenant": "globex"}


async def test_plugins_list_and_reload(serve, workspace):
    running = await serve(
        [entry("guard", config={"sleep_s": 0.001}), entry("broken", entrypoint="broken.py:Broken")]
    )
    await ringd("ring", "pre_flight", "--body", "{}", "--target", running.address)

    code, out, err = await ringd("plugins", "list", "--target", running.address)

    assert code == 0, err
    plugins = {p["name"]: p for p in json.loads(out)}
    assert plugins["guard"]["ring"] == "pre_flight"
    assert plugins["guard"]["status"] == "active"
    assert plugins["guard"]["version"] == "1.2.3"
    assert plugins["guard"]["stats"]["invocations"] == 1
    assert plugins["broken"]["status"] == "failed"
    assert "broken plugin refuses to import" in plugins["broken"]["load_error"]

    workspace.write_config([entry("guard")], version="v2")
    code, out, err = await ringd("reload", "--target", running.address)
    assert code == 0, err
    assert json.loads(out) == {"config_version": "v2", "generation": 2}

    code, out, err = await ringd("plugins", "disable", "guard", "--target", running.address)
    assert code == 0, err
    assert json.loads(out)["status"] == "disabled"


async def test_a_failed_call_exits_non_zero_with_the_status_on_stderr(serve):
    running = await serve([entry("guard")], server={"admin_token": TOKEN})

    (
        (no_token, _, no_token_err),
        (wrong, _, wrong_err),
        (unknown, _, unknown_err),
        (ok, ok_out, ok_err),
    ) = await asyncio.gather(
        ringd("plugins", "list", "--target", running.address),
        ringd("reload", "--target", running.address, "--token", "wrong"),
        ringd("plugins", "enable", "nope", "--target", running.address, "--token", TOKEN),
        ringd("plugins", "list", "--target", running.address, "--token", TOKEN),
    )

    assert no_token != 0
    assert no_token_err.startswith("ringd: UNAUTHENTICATED: ")
    assert wrong != 0
    assert "PERMISSION_DENIED" in wrong_err
    assert unknown != 0
    assert "NOT_FOUND" in unknown_err
    assert "'nope'" in unknown_err
    for err in (no_token_err, wrong_err, unknown_err):
        assert "Traceback" not in err
    assert ok == 0, ok_err
    assert [p["name"] for p in json.loads(ok_out)] == ["guard"]


async def test_a_bad_ring_request_is_refused_before_or_by_the_server(serve):
    running = await serve([entry("guard")])

    (bad_body, _, bad_body_err), (bad_ring, _, bad_ring_err) = await asyncio.gather(
        ringd("ring", "pre_flight", "--body", "[1, 2]", "--target", running.address),
        ringd("ring", "preflight", "--body", "{}", "--target", running.address),
    )

    assert bad_body != 0
    assert "--body" in bad_body_err
    assert "JSON object" in bad_body_err
    assert bad_ring != 0
    assert "unknown ring 'preflight'" in bad_ring_err
    assert "Traceback" not in bad_body_err + bad_ring_err


async def test_check_config_on_a_good_and_a_bad_file(workspace):
    good = workspace.write_config([entry("guard"), entry("usage", "background")], version="good-1")
    bad = workspace.root / "bad.yaml"
    bad.write_text(
        "version: bad-1\n"
        "plugins:\n"
        "  - {name: guard, entrypoint: scripted.py:Scripted, priority: high, colour: blue}\n"
        "  - {name: nohook, entrypoint: scripted.py:Scripted, hook: preflight}\n"
    )
    unloadable = workspace.root / "unloadable.yaml"
    unloadable.write_text("plugins:\n  - {name: broken, entrypoint: broken.py:Broken}\n")

    (
        (good_code, good_out, good_err),
        (bad_code, bad_out, bad_err),
        (load_code, _, load_err),
    ) = await asyncio.gather(
        ringd("check-config", str(good)),
        ringd("check-config", str(bad)),
        ringd("check-config", str(unloadable)),
    )

    assert good_code == 0, good_err
    assert "ok, 2 plugins, version good-1" in good_out
    assert bad_code != 0
    assert bad_out == ""
    assert "plugins[0] ('guard') field 'priority'" in bad_err
    assert "plugins[0] ('guard') field 'colour'" in bad_err
    assert "plugins[1] ('nohook') field 'hook'" in bad_err
    assert load_code != 0
    assert "plugin 'broken'" in load_err
    assert "broken plugin refuses to import" in load_err
    assert "Traceback" not in bad_err + load_err
