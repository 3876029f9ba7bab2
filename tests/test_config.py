"""Configuration: ``ACTORQ_*`` variables, keywords, ``config.replace()``, validation."""

from __future__ import annotations

import dataclasses

import pytest

import actorq

FIELDS = [f.name for f in dataclasses.fields(actorq.SystemConfig)]


def test_environment_sets_defaults_and_a_keyword_wins(monkeypatch):
    monkeypatch.setenv("ACTORQ_WINDOW", "123")
    monkeypatch.setenv("ACTORQ_CALL_TIMEOUT", "7.5")
    monkeypatch.setenv("ACTORQ_START_METHOD", "spawn")
    monkeypatch.setenv("ACTORQ_DEAD_LETTERS", "5")
    config = actorq.SystemConfig()
    assert (config.window, config.call_timeout, config.start_method) == (123, 7.5, "spawn")
    assert type(config.window) is int
    assert type(config.call_timeout) is float
    with actorq.ActorSystem(window=77, warm_spares=0) as s:
        assert s.config.window == 77  # the keyword wins over the environment
        assert s.config.call_timeout == 7.5
        assert s.config.start_method == "spawn"
        assert s.config.dead_letters == 5


def test_every_field_has_its_environment_variable(monkeypatch):
    # the table in docs/concepts.md: ACTORQ_<FIELD> for every field
    changed = {}
    for name in FIELDS:
        default = getattr(actorq.SystemConfig(), name)
        if name == "start_method":
            value: object = "fork"
        elif isinstance(default, int):
            value = default + 8  # keeps ring_size a multiple of 8
        else:
            value = default * 2
        monkeypatch.setenv(f"ACTORQ_{name.upper()}", str(value))
        changed[name] = value
    config = actorq.SystemConfig()
    assert {name: getattr(config, name) for name in FIELDS} == changed


def test_the_environment_is_read_when_the_system_is_created(monkeypatch):
    before = actorq.SystemConfig()
    monkeypatch.setenv("ACTORQ_STOP_TIMEOUT", "1.25")
    assert before.stop_timeout == 3.0
    assert actorq.SystemConfig().stop_timeout == 1.25


@pytest.mark.parametrize(("var", "raw", "words"), [
    ("ACTORQ_WINDOW", "1e3", "ACTORQ_WINDOW must be an integer"),
    ("ACTORQ_RING_SIZE", "1_048_576x", "ACTORQ_RING_SIZE must be an integer"),
    ("ACTORQ_CALL_TIMEOUT", "ten", "ACTORQ_CALL_TIMEOUT must be a number"),
])
def test_an_unreadable_environment_value_names_its_variable(monkeypatch, var, raw, words):
    monkeypatch.setenv(var, raw)
    with pytest.raises(ValueError, match=words):
        actorq.SystemConfig()
    with pytest.raises(ValueError, match=words):
        actorq.ActorSystem()


@pytest.mark.parametrize("var", ["ACTORQ_WINDOW", "ACTORQ_STOP_TIMEOUT"])
def test_an_invalid_environment_value_is_refused_like_a_keyword(monkeypatch, var):
    monkeypatch.setenv(var, "0")
    with pytest.raises(ValueError, match=var[len("ACTORQ_"):].lower()):
        actorq.ActorSystem()


def test_replace_returns_a_validated_copy():
    config = actorq.SystemConfig()
    other = config.replace(window=16, send_timeout=0.5)
    assert (other.window, other.send_timeout) == (16, 0.5)
    assert (config.window, config.send_timeout) == (8192, 10.0)  # frozen, unchanged
    assert other.ring_size == config.ring_size
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.window = 1  # type: ignore[misc]
    with pytest.raises(TypeError, match=r"unknown ActorSystem option.*windw"):
        config.replace(windw=16)
    with pytest.raises(ValueError, match="window must be at least 1"):
        config.replace(window=0)


@pytest.mark.parametrize(("changes", "words"), [
    ({"start_method": "thread"}, "start_method must be one of"),
    ({"ring_size": 4100}, "ring_size must be a multiple of 8"),
    ({"ring_size": 2048}, "ring_size must be"),
    ({"window": 0}, "window must be at least 1"),
    ({"call_timeout": 0}, "call_timeout must be positive"),
    ({"send_timeout": -1.0}, "send_timeout must be positive"),
    ({"start_timeout": 0.0}, "start_timeout must be positive"),
    ({"stop_timeout": float("nan")}, "stop_timeout must be positive"),
    ({"park_timeout": 0}, "park_timeout must be positive"),
    ({"monitor_interval": 0}, "monitor_interval must be positive"),
    ({"root_within": 0}, "root_within must be positive"),
    ({"spin_seconds": -0.1}, "spin_seconds must be at least 0"),
    ({"oob_threshold": 0}, "oob_threshold must be at least 1"),
    ({"outbox_messages": 0}, "outbox_messages must be at least 1"),
    ({"max_parked": -1}, "max_parked must be at least 0"),
    ({"warm_spares": -1}, "warm_spares must be at least 0"),
    ({"root_max_restarts": -1}, "root_max_restarts must be at least 0"),
    ({"dead_letters": -1}, "dead_letters must be at least 0"),
    ({"actor_gc_gen0": -1}, "actor_gc_gen0 must be at least 0"),
])
def test_invalid_values_raise_value_error_naming_the_field(changes, words):
    with pytest.raises(ValueError, match=words):
        actorq.SystemConfig().replace(**changes)
    with pytest.raises(ValueError, match=words):
        actorq.ActorSystem(**changes)


@pytest.mark.parametrize(("changes", "words"), [
    ({"window": 2.5}, "window must be an integer"),
    ({"ring_size": "1MiB"}, "ring_size must be an integer"),
    ({"call_timeout": "5"}, "call_timeout must be a number"),
    ({"warm_spares": True}, "warm_spares must be an integer"),
])
def test_values_of_the_wrong_type_raise_type_error(changes, words):
    with pytest.raises(TypeError, match=words):
        actorq.ActorSystem(**changes)


def test_unknown_keyword_raises_type_error_before_anything_starts():
    with pytest.raises(TypeError, match=r"unknown ActorSystem option.*call_timout"):
        actorq.ActorSystem(call_timout=5)


def test_zero_is_accepted_where_it_means_none():
    config = actorq.SystemConfig().replace(warm_spares=0, max_parked=0, root_max_restarts=0,
                                           dead_letters=0, spin_seconds=0, actor_gc_gen0=0)
    assert config.warm_spares == 0
    assert config.call_timeout == 60  # an int where a float is expected is fine
    assert actorq.SystemConfig().replace(call_timeout=5).call_timeout == 5


@pytest.mark.parametrize(("options", "words"), [
    ({"hang_timeout": 0}, "hang_timeout must be positive"),
    ({"max_rss": -1}, "max_rss must be positive"),
    ({"restart_on": {"signal", "segfault"}}, "restart_on has unknown causes.*segfault"),
    ({"poison_after": 0}, "poison_after must be at least 1"),
    ({"window_target": 0}, "window_target must be positive"),
    ({"window_min": 0}, "window_min"),
    ({"window_min": 64, "window_max": 32}, "window_min <= window_max"),
])
def test_invalid_actor_options_raise_value_error(options, words):
    with pytest.raises(ValueError, match=words):
        actorq.ActorOptions(**options)


def test_actor_options_store_restart_on_as_a_frozenset():
    opts = actorq.ActorOptions(restart_on=["signal", "lost"])
    assert opts.restart_on == frozenset({"signal", "lost"})
    assert isinstance(opts.restart_on, frozenset)
    assert actorq.ActorOptions().restart_on == frozenset(
        {"signal", "exit", "exception", "hang", "oom", "lost"})


def test_restart_on_given_a_string_is_refused():
    with pytest.raises(TypeError, match="restart_on must be a set of causes"):
        actorq.ActorOptions(restart_on="signal")
