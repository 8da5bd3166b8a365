"""The loader: LLMProxy plugin files unchanged, entrypoint forms, and the `core` aliases."""

from __future__ import annotations

import importlib.machinery
import subprocess
import sys

import pytest
import ringd.sdk
from ringd.sdk import PluginAction, PluginContext, PluginHook
from ringd.server.config import load_config
from ringd.server.engine import PluginOutcome
from ringd.server.exceptions import PluginLoadError
from ringd.server.loader import install_core_aliases, load_plugin_class

# Written the way LLMProxy's docs write a marketplace plugin: `core.*` imports, the
# metadata convention, the store through PluginState, a modify response.
LLMPROXY_PLUGIN = """
from core.plugin_sdk import BasePlugin, PluginResponse, PluginHook
from core.plugin_engine import PluginContext, PluginState


class TokenBudget(BasePlugin):
    name = "token_budget"
    hook = PluginHook.PRE_FLIGHT
    version = "1.0.0"
    author = "llmproxy-community"
    description = "Clamps max_tokens and counts requests per session"
    timeout_ms = 10

    def __init__(self, config=None):
        super().__init__(config)
        self.max_tokens = self.config.get("max_tokens", 1024)

    async def on_load(self):
        self.loaded = True

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        assert isinstance(ctx.state, PluginState)
        store = ctx.state.extra.get("store")
        if store:
            count = await store.incr(f"token_budget:{ctx.session_id}")
            ctx.metadata["_token_budget_requests"] = count
        body = dict(ctx.body)
        if body.get("max_tokens", 0) > self.max_tokens:
            body["max_tokens"] = self.max_tokens
            return PluginResponse.modify(body=body, message="max_tokens clamped")
        return PluginResponse.passthrough()
"""


async def test_an_llmproxy_plugin_file_loads_from_config_and_runs(workspace, make_engine, store):
    workspace.plugin("marketplace/token_budget.py", LLMPROXY_PLUGIN)
    engine = await make_engine(
        workspace.config(
            "plugins:\n"
            "  - name: token_budget\n"
            "    entrypoint: marketplace/token_budget.py:TokenBudget\n"
            "    config: {max_tokens: 256}\n"
            "    timeout_ms: 1000\n"  # a store write: room for a busy machine
        )
    )
    slot = engine.generation.slots["token_budget"]
    assert slot.loaded.load_error is None
    assert slot.loaded.instance.loaded is True
    assert slot.loaded.ring is PluginHook.PRE_FLIGHT

    ctx = PluginContext(body={"model": "m", "max_tokens": 4000}, session_id="s1")
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, ctx)
    assert outcome.action is PluginAction.MODIFY
    assert outcome.context.body == {"model": "m", "max_tokens": 256}
    assert outcome.results[0].outcome is PluginOutcome.OK
    assert outcome.results[0].message == "max_tokens clamped"
    assert outcome.results[0].version == "1.0.0"
    assert outcome.context.metadata["_token_budget_requests"] == 1

    small = await engine.execute_ring(
        PluginHook.PRE_FLIGHT, PluginContext(body={"max_tokens": 10}, session_id="s1")
    )
    assert small.action is PluginAction.PASSTHROUGH
    assert await store.get_state("token_budget:s1") == 2


def test_core_aliases_are_the_sdk_and_exist_only_in_sys_modules():
    install_core_aliases()
    assert sys.modules["core.plugin_sdk"] is ringd.sdk
    assert sys.modules["core.plugin_engine"] is ringd.sdk
    import core.plugin_engine  # type: ignore[import-not-found]
    from core import plugin_sdk  # type: ignore[import-not-found]

    assert plugin_sdk is ringd.sdk
    assert core.plugin_engine.PluginContext is ringd.sdk.PluginContext
    # Nothing named `core` is on disk on the import path: the alias is all there is.
    assert importlib.machinery.PathFinder.find_spec("core", sys.path) is None


def test_no_core_package_is_installed():
    # A fresh interpreter, before ringd installs its aliases, finds no `core` at all.
    code = "import importlib.util, ringd.sdk; print(importlib.util.find_spec('core'))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "None"


async def test_relative_file_entrypoints_resolve_against_the_config_folder(
    workspace, make_engine, tmp_path, monkeypatch
):
    workspace.plugin(
        "deploy/plugins/hello.py",
        """
        from ringd.sdk import PluginHook, BasePlugin, PluginResponse

        class Hello(BasePlugin):
            hook = PluginHook.PRE_FLIGHT
            async def execute(self, ctx):
                ctx.metadata["hello"] = "from deploy/plugins"
                return PluginResponse.passthrough()
        """,
    )
    config = workspace.config(
        "plugins:\n  - {name: hello, entrypoint: plugins/hello.py:Hello}\n", "deploy/ringd.yaml"
    )
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    engine = await make_engine(config)
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.context.metadata["hello"] == "from deploy/plugins"


async def test_absolute_file_entrypoint(workspace, make_engine):
    path = workspace.plugin(
        "abs/plug.py",
        """
        from ringd.sdk import PluginHook, BasePlugin, PluginResponse

        class Plug(BasePlugin):
            hook = PluginHook.PRE_FLIGHT
            async def execute(self, ctx):
                ctx.metadata["abs"] = True
                return PluginResponse.passthrough()
        """,
    )
    engine = await make_engine(workspace.config(f"plugins:\n  - {{name: p, entrypoint: '{path}:Plug'}}\n"))
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.context.metadata["abs"] is True


async def test_module_entrypoint_from_an_installed_package(workspace, make_engine, monkeypatch):
    site = workspace.root / "site"
    workspace.plugin("site/acme_plugins/__init__.py", "")
    workspace.plugin(
        "site/acme_plugins/routing.py",
        """
        from ringd.sdk import BasePlugin, PluginHook, PluginResponse

        class CheapRouter(BasePlugin):
            name = "cheap_router"
            hook = PluginHook.ROUTING

            async def execute(self, ctx):
                ctx.metadata["_route"] = self.config["model"]
                return PluginResponse.passthrough()
        """,
    )
    monkeypatch.syspath_prepend(str(site))
    try:
        engine = await make_engine(
            workspace.config(
                "plugins:\n"
                "  - {name: router, entrypoint: 'acme_plugins.routing:CheapRouter',"
                " config: {model: mini}}\n"
            )
        )
        # The class says ROUTING and the entry does not override it.
        assert engine.generation.slots["router"].loaded.ring is PluginHook.ROUTING
        outcome = await engine.execute_ring(PluginHook.ROUTING, PluginContext())
        assert outcome.context.metadata["_route"] == "mini"
    finally:
        sys.modules.pop("acme_plugins.routing", None)
        sys.modules.pop("acme_plugins", None)


async def test_two_files_with_the_same_class_name_do_not_clash(workspace, make_engine):
    for folder in ("one", "two"):
        workspace.plugin(
            f"{folder}/plugin.py",
            f"""
            from ringd.sdk import PluginHook, BasePlugin, PluginResponse

            class Plugin(BasePlugin):
                hook = PluginHook.PRE_FLIGHT
                async def execute(self, ctx):
                    ctx.metadata.setdefault("ran", []).append({folder!r})
                    return PluginResponse.passthrough()
            """,
        )
    engine = await make_engine(
        workspace.config(
            "plugins:\n"
            "  - {name: a, entrypoint: one/plugin.py:Plugin}\n"
            "  - {name: b, entrypoint: two/plugin.py:Plugin}\n"
        )
    )
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert outcome.context.metadata["ran"] == ["one", "two"]


async def test_the_entry_hook_overrides_the_class_hook(workspace, make_engine):
    workspace.plugin(
        "audit.py",
        """
        from ringd.sdk import BasePlugin, PluginHook, PluginResponse

        class Audit(BasePlugin):
            hook = PluginHook.PRE_FLIGHT

            async def execute(self, ctx):
                ctx.metadata["audited"] = True
                return PluginResponse.passthrough()
        """,
    )
    engine = await make_engine(
        workspace.config("plugins:\n  - {name: audit, entrypoint: audit.py:Audit, hook: background}\n")
    )
    pre = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    background = await engine.execute_ring(PluginHook.BACKGROUND, PluginContext())
    assert "audited" not in pre.context.metadata
    assert background.context.metadata["audited"] is True


async def test_a_class_hook_that_is_not_a_plugin_hook_fails_the_load(workspace, make_engine):
    workspace.plugin(
        "stringly.py",
        """
        from ringd.sdk import BasePlugin

        class Stringly(BasePlugin):
            hook = "pre_flight"
        """,
    )
    engine = await make_engine(
        workspace.config("plugins:\n  - {name: s, entrypoint: stringly.py:Stringly}\n")
    )
    error = engine.generation.slots["s"].loaded.load_error or ""
    assert "hook" in error
    assert "set 'hook' in the entry" in error


def test_load_plugin_class_errors_name_the_culprit(workspace):
    workspace.plugin("mod.py", "from ringd.sdk import BasePlugin\nclass NotAPlugin:\n    pass\nVALUE = 3\n")
    cases = {
        "mod.py:Missing": "has no class or function 'Missing'",
        "mod.py:NotAPlugin": "NotAPlugin is not a BasePlugin subclass or a function",
        "mod.py:VALUE": "VALUE is not a BasePlugin subclass",
        "gone.py:X": "cannot read plugin file",
        "no.such.module:X": "cannot import module 'no.such.module'",
    }
    for entrypoint, expected in cases.items():
        with pytest.raises(PluginLoadError) as caught:
            load_plugin_class(entrypoint, workspace.root)
        assert expected in str(caught.value), entrypoint


def test_an_unchanged_file_is_not_executed_again(workspace):
    counter = workspace.root / "executions.txt"
    workspace.plugin(
        "once.py",
        f"""
        from pathlib import Path
        from ringd.sdk import PluginHook, BasePlugin

        marker = Path({str(counter)!r})
        marker.write_text(marker.read_text() + "x" if marker.exists() else "x")

        class Once(BasePlugin):
            hook = PluginHook.PRE_FLIGHT
            pass
        """,
    )
    first = load_plugin_class("once.py:Once", workspace.root)
    second = load_plugin_class("once.py:Once", workspace.root)
    assert first is second
    assert counter.read_text() == "x"


def test_an_edited_file_is_loaded_fresh(workspace):
    workspace.plugin("ver.py", "from ringd.sdk import BasePlugin\nclass V(BasePlugin):\n    version = '1'\n")
    first = load_plugin_class("ver.py:V", workspace.root)
    workspace.plugin("ver.py", "from ringd.sdk import BasePlugin\nclass V(BasePlugin):\n    version = '2'\n")
    second = load_plugin_class("ver.py:V", workspace.root)
    assert (first.version, second.version) == ("1", "2")


def test_load_config_then_loader_agree_on_the_base_folder(workspace):
    workspace.plugin("conf/p/x.py", "from ringd.sdk import BasePlugin\nclass X(BasePlugin):\n    pass\n")
    config = load_config(
        workspace.write_yaml("plugins:\n  - {name: x, entrypoint: p/x.py:X}\n", "conf/r.yaml")
    )
    cls = load_plugin_class(config.plugins[0].entrypoint, config.base_dir)
    assert cls.__name__ == "X"
