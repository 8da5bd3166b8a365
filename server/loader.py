"""Turns a config entry's entrypoint into a plugin class.

``package.module:Class`` is imported normally. ``path/file.py:Class`` (relative
to the config file) is executed as a module named after its content hash, so a
reload picks up an edited file and an unchanged file is not executed again.
LLMProxy's module names ``core.plugin_sdk`` and ``core.plugin_engine`` resolve to
``ringd.sdk``, so LLMProxy plugin files load unchanged.

A ``type: wasm`` entry names a ``path/module.wasm`` instead; :func:`load_entry_class`
turns it into a plugin class of :mod:`ringd.server.wasm`, so the engine loads,
runs and reloads it like any other plugin.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import ringd.sdk
from ringd.sdk import BasePlugin, PluginContext, PluginResponse
from ringd.server.config import PluginEntry, PluginType
from ringd.server.exceptions import PluginLoadError

FUNCTION_TIMEOUT_MS = 500
"""A legacy function plugin's time budget when its entry sets none (LLMProxy's default)."""

_CORE_ALIASES = ("core.plugin_sdk", "core.plugin_engine")


def install_core_aliases() -> None:
    """Make ``core.plugin_sdk`` and ``core.plugin_engine`` importable as ``ringd.sdk``.

    Only fills names that are free, so a real ``core`` package would win.
    """
    if "core" not in sys.modules:
        core = types.ModuleType("core", "LLMProxy compatibility aliases provided by ringd")
        core.__path__ = []
        sys.modules["core"] = core
    core = sys.modules["core"]
    for name in _CORE_ALIASES:
        if name not in sys.modules:
            sys.modules[name] = ringd.sdk
            setattr(core, name.split(".", 1)[1], ringd.sdk)


def _split(entrypoint: str) -> tuple[str, str]:
    target, _, attr = entrypoint.rpartition(":")
    if not target or not attr:
        raise PluginLoadError(f"entrypoint {entrypoint!r} must look like 'module:Class' or 'file.py:Class'")
    return target, attr


def is_file_entrypoint(entrypoint: str) -> bool:
    """True for ``path/file.py:Class`` entrypoints."""
    target, _, _ = entrypoint.rpartition(":")
    return target.endswith(".py") or "/" in target


def entrypoint_fingerprint(entrypoint: str, base_dir: Path) -> str:
    """A digest that changes when the code an entrypoint names changes (file content)."""
    target, _ = _split(entrypoint)
    if not is_file_entrypoint(entrypoint):
        return entrypoint
    try:
        return hashlib.sha256((base_dir / target).read_bytes()).hexdigest()
    except OSError:
        return "missing"


def entry_fingerprint(entry: PluginEntry, base_dir: Path) -> str:
    """A digest that changes when the code an entry names changes.

    For a ``type: wasm`` entry: the module file's content and the entry's sandbox
    settings, so an edited ``.wasm`` file (or a new memory limit) is a new plugin.
    """
    if entry.type is PluginType.PYTHON:
        return entrypoint_fingerprint(entry.entrypoint, base_dir)
    try:
        content = hashlib.sha256((base_dir / entry.entrypoint).read_bytes()).hexdigest()
    except OSError:
        content = "missing"
    return f"wasm:{content}:{entry.wasm!r}"


def load_entry_class(entry: PluginEntry, base_dir: Path) -> type[BasePlugin]:
    """The plugin class of a config entry: imported (Python) or built around its module (WASM).

    Raises:
        PluginLoadError: the code cannot be found or is not a plugin.
    """
    if entry.type is PluginType.PYTHON:
        return load_plugin_class(entry.entrypoint, base_dir)
    # Imported here: a config without WASM entries never loads the Extism runtime.
    from ringd.server.wasm import WasmModuleError, wasm_plugin_class

    try:
        return wasm_plugin_class(entry, base_dir)
    except WasmModuleError as exc:
        raise PluginLoadError(str(exc)) from None


def _import_file(path: Path) -> types.ModuleType:
    try:
        source = path.read_bytes()
    except OSError as exc:
        raise PluginLoadError(f"cannot read plugin file {path}: {exc.strerror or exc}") from None
    digest = hashlib.sha256(source).hexdigest()[:16]
    module_name = f"ringd_plugin_{path.stem}_{digest}"
    cached = sys.modules.get(module_name)
    if cached is not None:
        return cached
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise PluginLoadError(f"cannot load plugin file {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        del sys.modules[module_name]
        raise PluginLoadError(f"syntax error in {path} line {exc.lineno}: {exc.msg}") from None
    except Exception as exc:  # the plugin file's top level raised: report it as this plugin's load error
        del sys.modules[module_name]
        raise PluginLoadError(f"importing {path} raised {type(exc).__name__}: {exc}") from exc
    return module


def load_plugin_class(entrypoint: str, base_dir: Path) -> type[BasePlugin]:
    """Import the class an entrypoint names and check it is a plugin.

    Raises:
        PluginLoadError: the module or class is missing, or the class is not a BasePlugin.
    """
    install_core_aliases()
    target, class_name = _split(entrypoint)
    if is_file_entrypoint(entrypoint):
        path = Path(target)
        module = _import_file(path if path.is_absolute() else base_dir / path)
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise PluginLoadError(f"cannot import module {target!r}: {exc}") from None
        except Exception as exc:  # the module's top level raised: report it as this plugin's load error
            raise PluginLoadError(f"importing {target!r} raised {type(exc).__name__}: {exc}") from exc
    cls = getattr(module, class_name, None)
    if cls is None:
        raise PluginLoadError(f"{target} has no class or function {class_name!r}")
    if isinstance(cls, type) and issubclass(cls, BasePlugin):
        return cls
    if inspect.isfunction(cls):
        return function_plugin(cls)
    raise PluginLoadError(f"{target}:{class_name} is not a BasePlugin subclass or a function")


def function_plugin(function: Callable[[PluginContext], Any]) -> type[BasePlugin]:
    """Wrap an LLMProxy legacy function plugin (``def fn(ctx)`` or ``async def fn(ctx)``) as a class.

    It returns ``None`` (passthrough) or a :class:`PluginResponse`, and may end the
    ring LLMProxy's way with ``ctx.stop_chain``. A plain ``def`` runs on a worker
    thread, as LLMProxy runs it, so it cannot block the event loop. Its entry must
    name the ``hook``; its time budget is :data:`FUNCTION_TIMEOUT_MS` unless the
    entry sets ``timeout_ms``.
    """
    is_async = inspect.iscoroutinefunction(function)

    class FunctionPlugin(BasePlugin):
        name = function.__name__
        hook = None  # type: ignore[assignment]  # the entry must say which ring
        version = "0.0.0"
        description = (function.__doc__ or "").strip().split("\n", 1)[0]
        timeout_ms = FUNCTION_TIMEOUT_MS

        async def execute(self, ctx: PluginContext) -> PluginResponse:
            if is_async:
                returned = await function(ctx)
            else:
                returned = await asyncio.to_thread(function, ctx)
            return returned  # type: ignore[no-any-return]  # None or a response: the engine checks

    FunctionPlugin.__qualname__ = FunctionPlugin.__name__ = f"FunctionPlugin[{function.__qualname__}]"
    return FunctionPlugin
