"""The config file: what a valid file means, and how a bad one is reported (file, entry, field)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from ringd.sdk import PluginHook
from ringd.server.config import (
    BreakerSettings,
    ConfigError,
    FailPolicy,
    load_config,
    parse_config,
)


def bad_config(workspace, text: str) -> str:
    """Write ``text`` as the config file, load it, and return the ConfigError's message."""
    path = workspace.write_yaml(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    message = str(caught.value)
    assert str(path) in message, "the error names the file"
    return message


GOOD_ENTRY = "  - {name: good, entrypoint: plugins/good.py:Good}\n"


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        pytest.param(
            "{name: pii, entrypoint: p.py:P, hook: preflight}",
            ["plugins[1] ('pii')", "field 'hook'", "'preflight'", "pre_flight"],
            id="unknown-hook",
        ),
        pytest.param(
            "{name: pii, hook: pre_flight}",
            ["plugins[1] ('pii')", "field 'entrypoint'", "missing"],
            id="missing-entrypoint",
        ),
        pytest.param(
            "{name: pii, entrypoint: just_a_module}",
            ["plugins[1] ('pii')", "field 'entrypoint'", "'just_a_module'"],
            id="entrypoint-without-class",
        ),
        pytest.param(
            "{name: good, entrypoint: other.py:Other}",
            ["plugins[1] ('good')", "field 'name'", "duplicate plugin name 'good'"],
            id="duplicate-name",
        ),
        pytest.param(
            "{name: pii, entrypoint: p.py:P, timeout_ms: -5}",
            ["plugins[1] ('pii')", "field 'timeout_ms'", "-5"],
            id="negative-timeout",
        ),
        pytest.param(
            "{name: pii, entrypoint: p.py:P, timeout_ms: 2.5}",
            ["plugins[1] ('pii')", "field 'timeout_ms'", "2.5"],
            id="fractional-timeout",
        ),
        pytest.param(
            '{name: pii, entrypoint: p.py:P, priority: "high"}',
            ["plugins[1] ('pii')", "field 'priority'", "'high'", "str"],
            id="priority-string",
        ),
        pytest.param(
            '{name: pii, entrypoint: p.py:P, enabled: "yes"}',
            ["plugins[1] ('pii')", "field 'enabled'", "'yes'", "true or false"],
            id="enabled-string",
        ),
        pytest.param(
            "{name: pii, entrypoint: p.py:P, fail_policy: sometimes}",
            ["plugins[1] ('pii')", "field 'fail_policy'", "'sometimes'", "open, closed"],
            id="unknown-fail-policy",
        ),
        pytest.param(
            "{name: pii, entrypoint: p.py:P, config: [1, 2]}",
            ["plugins[1] ('pii')", "field 'config'", "mapping", "list"],
            id="config-not-a-mapping",
        ),
        pytest.param(
            "{name: pii, entrypoint: p.py:P, config: []}",
            ["plugins[1] ('pii')", "field 'config'", "mapping", "list"],
            id="config-empty-list",
        ),
        pytest.param(
            "{name: pii, entrypoint: p.py:P, timeout: 50}",
            ["plugins[1] ('pii')", "field 'timeout'", "unknown field"],
            id="unknown-field",
        ),
        pytest.param(
            "{name: pii, entrypoint: p.py:P, circuit_breaker: {failure_rate: many}}",
            ["plugins[1] ('pii')", "circuit_breaker", "failure_rate", "'many'"],
            id="breaker-rate-string",
        ),
        pytest.param(
            "{name: pii, entrypoint: p.py:P, circuit_breaker: {failure_rate: 1.5}}",
            ["plugins[1] ('pii')", "circuit_breaker", "failure_rate", "(0, 1]", "1.5"],
            id="breaker-rate-above-one",
        ),
        pytest.param(
            "{name: pii, entrypoint: p.py:P, circuit_breaker: {failure_threshold: 5}}",
            ["plugins[1] ('pii')", "circuit_breaker", "failure_threshold", "replaced by failure_rate"],
            id="breaker-legacy-threshold",
        ),
        pytest.param(
            "{name: pii, entrypoint: p.py:P, circuit_breaker: {cooldown_s: 2, max_cooldown_s: 1}}",
            ["plugins[1] ('pii')", "circuit_breaker", "max_cooldown_s", "below cooldown_s"],
            id="breaker-ceiling-below-cooldown",
        ),
        pytest.param(
            "{name: pii, entrypoint: p.py:P, circuit_breaker: {cooldown_s: -1}}",
            ["plugins[1] ('pii')", "circuit_breaker", "cooldown_s", "-1"],
            id="breaker-negative-cooldown",
        ),
        pytest.param(
            "{name: pii, entrypoint: p.py:P, circuit_breaker: {threshold: 3}}",
            ["plugins[1] ('pii')", "circuit_breaker", "threshold", "unknown field"],
            id="breaker-unknown-field",
        ),
        pytest.param(
            "{name: 42, entrypoint: p.py:P}",
            ["plugins[1]", "field 'name'", "42"],
            id="name-not-a-string",
        ),
        pytest.param("just-a-string", ["plugins[1]", "mapping", "str"], id="entry-not-a-mapping"),
    ],
)
def test_bad_entry_names_file_entry_and_field(workspace, entry: str, expected: list[str]) -> None:
    message = bad_config(workspace, f"plugins:\n{GOOD_ENTRY}  - {entry}\n")
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"
    assert "plugins[0]" not in message, "the good entry is not blamed"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("plugins: {name: a, entrypoint: a.py:A}\n", ["field 'plugins'", "list"], id="mapping"),
        pytest.param("plugins: {}\n", ["field 'plugins'", "list"], id="empty-mapping"),
        pytest.param("plugins: a.py:A\n", ["field 'plugins'", "list"], id="string"),
        pytest.param("plugins: 0\n", ["field 'plugins'", "list"], id="zero"),
    ],
)
def test_plugins_must_be_a_list(workspace, text: str, expected: list[str]) -> None:
    message = bad_config(workspace, text)
    for part in expected:
        assert part in message


def test_unknown_top_level_field(workspace) -> None:
    message = bad_config(workspace, "plugin:\n" + GOOD_ENTRY)
    assert "field 'plugin'" in message
    assert "unknown" in message


def test_bad_server_field(workspace) -> None:
    message = bad_config(workspace, "server:\n  grace_s: soon\n  listen_on: x\n")
    assert "server field 'grace_s'" in message
    assert "server field 'listen_on'" in message


def test_invalid_yaml_names_the_file_and_the_line(workspace) -> None:
    message = bad_config(workspace, "plugins:\n  - {name: a, entrypoint: a.py:A\n  - name: b\n")
    assert "not valid YAML" in message
    assert "line" in message


def test_top_level_must_be_a_mapping(workspace) -> None:
    message = bad_config(workspace, "- name: a\n  entrypoint: a.py:A\n")
    assert "top level must be a mapping" in message


def test_every_problem_is_reported_in_one_error(workspace) -> None:
    message = bad_config(
        workspace,
        """\
        plugins:
          - {name: a, entrypoint: a.py:A, hook: nowhere}
          - {name: b, entrypoint: b.py:B, priority: high, timeout_ms: -1}
          - {name: a, entrypoint: c.py:C}
        """,
    )
    lines = message.splitlines()[1:]
    assert len(lines) == 4, message
    assert "plugins[0] ('a') field 'hook'" in lines[0]
    assert "plugins[1] ('b') field 'priority'" in lines[1]
    assert "plugins[1] ('b') field 'timeout_ms'" in lines[2]
    assert "plugins[2] ('a') field 'name'" in lines[3]


def test_unreadable_file(tmp_path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_a_file_that_is_not_utf8_is_a_config_error_naming_the_byte(tmp_path) -> None:
    path = tmp_path / "garbage.yaml"
    path.write_bytes(b"version: 1\nplugins: []\n# \x8a\xff\n")
    with pytest.raises(ConfigError, match=r"garbage\.yaml: not UTF-8 text \(byte 0x8a at offset 25\)"):
        load_config(path)
    checked = run_check_config(path)
    assert checked.returncode != 0
    assert "not UTF-8 text" in checked.stderr
    assert "Traceback" not in checked.stderr


def test_a_config_that_fails_constructs_no_plugin(workspace) -> None:
    # Validation is a pure parse: nothing is imported or constructed before it passes.
    sentinel = workspace.root / "constructed.txt"
    workspace.plugin(
        "side_effect.py",
        f"""
        from pathlib import Path
        from ringd.sdk import PluginHook, BasePlugin

        Path({str(sentinel)!r} + ".imported").write_text("imported")

        class SideEffect(BasePlugin):
            hook = PluginHook.PRE_FLIGHT
            def __init__(self, config=None):
                super().__init__(config)
                Path({str(sentinel)!r}).write_text("constructed")
        """,
    )
    path = workspace.write_yaml(
        "plugins:\n"
        "  - {name: side, entrypoint: side_effect.py:SideEffect}\n"
        "  - {name: bad, entrypoint: x.py:X, enabled: 'yes'}\n"
    )
    with pytest.raises(ConfigError):
        load_config(path)
    assert not sentinel.exists()
    assert not sentinel.with_name("constructed.txt.imported").exists()


async def test_an_engine_reload_with_a_config_that_fails_keeps_serving(workspace, make_engine) -> None:
    from ringd.sdk import PluginContext

    workspace.plugin(
        "tag.py",
        """
        from ringd.sdk import PluginHook, BasePlugin, PluginResponse

        class Tag(BasePlugin):
            hook = PluginHook.PRE_FLIGHT
            async def execute(self, ctx):
                ctx.metadata["tag"] = self.config["tag"]
                return PluginResponse.passthrough()
        """,
    )
    path = workspace.write_yaml(
        "version: v1\nplugins:\n  - {name: t, entrypoint: tag.py:Tag, config: {tag: one}}\n"
    )
    engine = await make_engine(load_config(path))
    before = engine.generation
    workspace.write_yaml(
        "version: v2\nplugins:\n"
        "  - {name: t, entrypoint: tag.py:Tag, config: {tag: two}}\n"
        "  - {name: u, entrypoint: tag.py:Tag, priority: first}\n"
    )
    with pytest.raises(ConfigError, match="priority"):
        await engine.reload(load_config(path))
    assert engine.generation is before
    outcome = await engine.execute_ring(PluginHook.PRE_FLIGHT, PluginContext())
    assert (outcome.config_version, outcome.context.metadata["tag"]) == ("v1", "one")


def test_a_full_entry_parses_to_its_values(tmp_path) -> None:
    text = textwrap.dedent(
        """\
        version: "2024-06-01"
        store: sqlite:state/ringd.db
        server:
          listen: 127.0.0.1:0
          grace_s: 2.5
        plugins:
          - name: guard
            hook: PRE_FLIGHT
            entrypoint: plugins/guard.py:Guard
            priority: 5
            enabled: false
            timeout_ms: 25
            fail_policy: OPEN
            config: {threshold: 0.8, words: [a, b]}
            circuit_breaker: {failure_rate: 0.25, minimum_calls: 8, cooldown_s: 0.5}
          - name: minimal
            entrypoint: my_pkg.plugins:Minimal
        """
    )
    config = parse_config(text, path=tmp_path / "ringd.yaml")
    assert config.version == "2024-06-01"
    assert config.store == "sqlite:state/ringd.db"
    assert config.server.listen == ("127.0.0.1:0",)
    assert config.server.grace_s == 2.5
    assert config.base_dir == tmp_path
    guard, minimal = config.plugins
    assert guard.name == "guard"
    assert guard.hook is PluginHook.PRE_FLIGHT
    assert guard.entrypoint == "plugins/guard.py:Guard"
    assert (guard.priority, guard.enabled, guard.timeout_ms) == (5, False, 25)
    assert guard.fail_policy is FailPolicy.OPEN
    assert guard.config == {"threshold": 0.8, "words": ["a", "b"]}
    assert guard.circuit_breaker == BreakerSettings(failure_rate=0.25, minimum_calls=8, cooldown_s=0.5)
    # Defaults: hook and fail policy come from the class and the ring when not set.
    assert minimal.hook is None
    assert (minimal.priority, minimal.enabled, minimal.timeout_ms) == (100, True, None)
    assert minimal.fail_policy is None
    assert minimal.config == {}


def test_version_defaults_to_a_content_hash() -> None:
    first = parse_config("plugins: []\n")
    same = parse_config("plugins: []\n")
    other = parse_config("plugins: []\nstore: other.db\n")
    assert first.version == same.version
    assert first.version != other.version
    assert len(first.version) == 12


def test_an_empty_file_is_refused_and_an_explicit_empty_list_is_a_config_with_no_plugins() -> None:
    # A file an editor or a bad redirect truncated must not turn every plugin off on reload.
    for text in ("", "\n\n", "# only a comment\n"):
        with pytest.raises(ConfigError, match=r"the file is empty .*write `plugins: \[\]`"):
            parse_config(text)
    assert parse_config("plugins: []\n").plugins == ()
    assert parse_config("plugins:\n").plugins == ()


def run_check_config(path) -> subprocess.CompletedProcess[str]:
    ringd = Path(sys.executable).with_name("ringd")
    command = [str(ringd), "check-config", str(path)]
    return subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)


def test_check_config_rejects_a_bad_file_before_constructing_anything(workspace) -> None:
    sentinel = workspace.root / "constructed.txt"
    workspace.plugin(
        "side_effect.py",
        f"""
        from pathlib import Path
        from ringd.sdk import PluginHook, BasePlugin

        class SideEffect(BasePlugin):
            hook = PluginHook.PRE_FLIGHT
            def __init__(self, config=None):
                super().__init__(config)
                Path({str(sentinel)!r}).write_text("constructed")
        """,
    )
    good = "  - {name: side, entrypoint: side_effect.py:SideEffect}\n"
    bad_path = workspace.write_yaml(
        "plugins:\n" + good + "  - {name: limiter, entrypoint: x.py:X, timeout_ms: -1}\n"
    )
    result = run_check_config(bad_path)
    assert result.returncode == 2
    assert str(bad_path) in result.stderr
    assert "plugins[1] ('limiter') field 'timeout_ms'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not sentinel.exists()

    good_path = workspace.write_yaml("plugins:\n" + good, "good.yaml")
    result = run_check_config(good_path)
    assert result.returncode == 0, result.stderr
    assert "ok, 1 plugins" in result.stdout
    assert sentinel.exists(), "check-config loads the plugins of a valid file"


def test_check_config_names_a_plugin_that_fails_to_load(workspace) -> None:
    workspace.plugin("broken.py", "from ringd.sdk import BasePlugin\nclass Broken(BasePlugin)\n")
    path = workspace.write_yaml("plugins:\n  - {name: broken_one, entrypoint: broken.py:Broken}\n")
    result = run_check_config(path)
    assert result.returncode == 1
    assert "broken_one" in result.stderr
    assert "syntax error" in result.stderr


# ------------------------------------------------------------------ operations settings (issue 14)


def test_log_format_and_metrics_listen_come_from_the_file_and_the_environment_overrides(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("RINGD_LOG_FORMAT", raising=False)
    monkeypatch.delenv("RINGD_METRICS_LISTEN", raising=False)
    text = "server:\n  log_format: JSON\n  metrics_listen: 127.0.0.1:9464\n"
    settings = parse_config(text).server
    assert (settings.log_format.value, settings.metrics_listen) == ("json", "127.0.0.1:9464")
    defaults = parse_config("plugins: []").server
    assert (defaults.log_format.value, defaults.metrics_listen) == ("text", None)  # metrics off unless set

    monkeypatch.setenv("RINGD_LOG_FORMAT", "text")
    monkeypatch.setenv("RINGD_METRICS_LISTEN", "0.0.0.0:9500")
    settings = parse_config(text).server
    assert (settings.log_format.value, settings.metrics_listen) == ("text", "0.0.0.0:9500")


def test_bad_log_format_and_metrics_listen_are_named(workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RINGD_LOG_FORMAT", raising=False)
    monkeypatch.delenv("RINGD_METRICS_LISTEN", raising=False)
    message = bad_config(workspace, "server:\n  log_format: xml\n  metrics_listen: unix:/tmp/m.sock\n")
    assert "server field 'log_format': unknown value 'xml'; expected one of text, json" in message
    assert "server field 'metrics_listen': must be host:port" in message

    monkeypatch.setenv("RINGD_LOG_FORMAT", "yaml")
    message = bad_config(workspace, "version: v1\n")
    assert "RINGD_LOG_FORMAT: unknown value 'yaml'" in message
