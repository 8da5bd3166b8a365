"""Test support for the ringd suite, registered from ``tests/conftest.py`` (``pytest_plugins``).

- :mod:`support.workspace`: one test's folder (plugin files, ``ringd.yaml``, the
  store) and the scripted plugin whose config says what it does;
- :mod:`support.rpc`: a running in-process server and its clients, request builders;
- :mod:`support.fixtures`: the fixtures (``workspace``, ``store``, ``make_engine``, ``serve``);
- :mod:`support.redis`: a throwaway ``redis-server`` for the Redis store tests;
- :mod:`support.process`: ``RingdProcess``, one ``ringd serve`` process started through its
  ready signal (``--ready-fd``), and the ``ringd_process`` fixture.
"""
