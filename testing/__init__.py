"""ringd.testing: test a plugin the way ringd runs it, without a server.

Two levels, both plain ``async`` helpers that any test runner can await:

- **One plugin.** :func:`make_context` builds a :class:`~ringd.sdk.PluginContext`
  wired to a store (``ctx.state.extra["store"]``), :func:`plugin_state` opens that
  store (in memory by default) and :func:`run_plugin` calls ``execute`` and checks
  that it returned a :class:`~ringd.sdk.PluginResponse`::

      async with plugin_state() as state:
          ctx = make_context({"messages": [...]}, state=state, headers={"x-tenant": "acme"})
          response = await run_plugin(NoShouting({"max_capitals": 0.5}), ctx)
          assert response.action == "block"

- **A whole ring**, from a config snippet (a YAML string, a mapping, or a list of
  plugin entries, exactly as in ``ringd.yaml``) with the engine's real semantics:
  priority order, per-plugin timeouts cut to a deadline, fail policies, circuit
  breakers, ``on_load``/``on_unload``. :class:`RingHarness` keeps one engine and one
  store across calls (a rate limit counts across requests); :func:`run_ring` is the
  one-shot form::

      async with RingHarness("plugins: [{name: no_shouting, entrypoint: shout.py:NoShouting}]",
                             base_dir=tmp_path) as rings:
          outcome = await rings.run("pre_flight", {"messages": [...]})
          assert outcome.action == "block" and outcome.decided_by == "no_shouting"

pytest: the helpers need nothing but an async test (pytest-asyncio). For fixtures, add
``pytest_plugins = ["ringd.testing.pytest_plugin"]`` to a ``conftest.py``: it provides
``plugin_state`` (a fresh in-memory store per test), ``make_ctx`` (a context on it) and
``ring_harness`` (a factory of harnesses, closed at the end of the test).
"""

from ringd.testing._harness import RingHarness, RingOutcome, run_ring
from ringd.testing._plugin import make_context, plugin_state, run_plugin

__all__ = ["RingHarness", "RingOutcome", "make_context", "plugin_state", "run_plugin", "run_ring"]
