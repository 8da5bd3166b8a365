"""One test's folder, as an operator lays it out: plugin files, ``ringd.yaml``, the store.

Plugins are entries of one scripted plugin (``scripted.py``, written into every
workspace) whose config says what it does, so a test lays a ring out in its config
alone; :meth:`Workspace.plugin` writes any other plugin file.
"""

from __future__ import annotations

import json
import sqlite3
import textwrap
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from ringd.server.config import RingdConfig, load_config

# One plugin whose config says what it does; every option is off unless configured.
SCRIPTED = """
import asyncio
from pathlib import Path

from ringd.sdk import BasePlugin, PluginContext, PluginHook, PluginResponse


class Scripted(BasePlugin):
    name = "scripted"
    hook = PluginHook.PRE_FLIGHT
    version = "1.2.3"
    author = "ringd tests"
    description = "does what its config says"
    timeout_ms = 2000

    async def execute(self, ctx: PluginContext) -> PluginResponse:
        cfg = self.config
        if cfg.get("started_log"):
            with open(cfg["started_log"], "a") as log:
                log.write(ctx.request_id + "\\n")
        if cfg.get("sleep_s"):
            await asyncio.sleep(cfg["sleep_s"])
        if cfg.get("trace"):
            ctx.metadata.setdefault("ran", []).append(cfg["trace"])
        for header, key in cfg.get("metadata_from_header", {}).items():
            ctx.metadata[key] = ctx.request.headers.get(header)
        ctx.metadata.update(cfg.get("set_metadata", {}))
        for key, body_key in cfg.get("body_from_metadata", {}).items():
            ctx.body[body_key] = ctx.metadata.get(key)
        if cfg.get("patch_response"):
            ctx.response.update(cfg["patch_response"])
        if cfg.get("append_message"):
            ctx.body.setdefault("messages", []).append({"role": "system", "content": cfg["append_message"]})
        required = cfg.get("require_metadata")
        if required and required not in ctx.metadata:
            return PluginResponse.block(401, "missing_" + required, required + " is not in the metadata")
        if cfg.get("store_key"):
            store = ctx.state.extra["store"]
            await store.set_state(cfg["store_key"], {"request_id": ctx.request_id, "body": ctx.body})
        if cfg.get("touch"):
            Path(cfg["touch"]).write_text(ctx.request_id)
        action = cfg.get("action", "pass")
        if action == "modify":
            return PluginResponse.modify(body=dict(cfg["body"]), message=cfg.get("message"))
        if action == "block":
            return PluginResponse.block(cfg["status"], cfg["error_type"], cfg.get("message", ""))
        if action == "cache":
            return PluginResponse.cache_hit(response=dict(cfg["response"]), message=cfg.get("message"))
        if action == "raise":
            raise RuntimeError(cfg.get("message", "scripted failure"))
        return PluginResponse.passthrough(message=cfg.get("message"))
"""

BROKEN = """
raise RuntimeError("broken plugin refuses to import")
"""


def entry(
    name: str, hook: str = "pre_flight", *, entrypoint: str = "scripted.py:Scripted", **fields: Any
) -> dict[str, Any]:
    """A plugin entry of the config file. ``config=`` is the plugin's own config."""
    return {"name": name, "hook": hook, "entrypoint": entrypoint, **fields}


class Workspace:
    """The folder of one test: plugin files, config files and the server's store.

    ``scripted.py`` (:data:`SCRIPTED`) and ``broken.py`` (:data:`BROKEN`) are written
    into it at once; :meth:`plugin` writes others.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.config_path = root / "ringd.yaml"
        self.store_path = root / "store" / "ringd.db"
        # The loader caches file modules by content: a per-test token keeps one test's
        # plugin modules (and any class attributes) apart from another's.
        self._token = f"\n# test token {uuid.uuid4().hex}\n"
        self.plugin("scripted.py", SCRIPTED)
        self.plugin("broken.py", BROKEN)

    def plugin(self, filename: str, source: str) -> Path:
        """Write a plugin file (dedented) and return its path."""
        path = self.root / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source).strip() + self._token)
        return path

    def write_yaml(self, text: str, filename: str = "ringd.yaml") -> Path:
        """Write a config file as YAML text (dedented) and return its path."""
        path = self.root / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
        return path

    def config(self, text: str, filename: str = "ringd.yaml") -> RingdConfig:
        """Write a YAML config file and load it the way the server does."""
        return load_config(self.write_yaml(text, filename))

    def write_config(
        self,
        plugins: Sequence[dict[str, Any]],
        *,
        server: dict[str, Any] | None = None,
        version: str = "v1",
    ) -> Path:
        """Write ``ringd.yaml`` from plugin entries (:func:`entry`), the store in this folder."""
        document: dict[str, Any] = {"version": version, "store": str(self.store_path)}
        if server:
            document["server"] = server
        document["plugins"] = list(plugins)
        self.config_path.write_text(yaml.safe_dump(document, sort_keys=False))
        return self.config_path

    def stored(self, key: str) -> Any:
        """The JSON value the store holds under ``key``, read from the SQLite file; None if absent."""
        with sqlite3.connect(self.store_path) as conn:
            row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])
