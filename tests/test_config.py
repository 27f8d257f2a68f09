"""Settings: one table, environment parsed once, malformed values warn once and fall back."""

from __future__ import annotations

import logging
import os
import pickle

import pytest

from otel_perf import ConfigError, _config, environment_variables
from otel_perf._config import (
    BUILTIN_PARSERS,
    ENV_VARS,
    SETTINGS,
    Settings,
    check_environment,
    get_settings,
    load_settings,
    parse_size,
    settings_as_env,
)

# One malformed value per variable, and the default it must fall back to.
MALFORMED = {
    "OTEL_PERF_ENABLED": "maybe",
    "OTEL_PERF_POOL_SPANS": "2x",
    "OTEL_PERF_POOL_SPAN_MIN_DURATION": "slowish",
    "OTEL_PERF_TOOLS": "not a path",
    "OTEL_PERF_TOOL_CAPTURE_CONTENT": "yes please",
    "OTEL_PERF_SUBPROCESS_CAPTURE_ARGS": "nah",
    "OTEL_PERF_PARSERS": "pkg.mod.func",
    "OTEL_PERF_PARSERS_BUILTIN": "cobol",
    "OTEL_PERF_PARSE_SPAN_MIN_DURATION": "fast",
    "OTEL_PERF_PARSE_SPAN_MIN_BYTES": "5 MB",
    "OTEL_PERF_MEMORY_LIMIT": "12XB",
    "OTEL_PERF_MEMORY_THRESHOLD": "abc",
    "OTEL_PERF_MEMORY_CLEANUP": "sometimes",
    "OTEL_PERF_MEMORY_CHECK_INTERVAL": "soon",
    "OTEL_PERF_EVENTLOOP_LAG_INTERVAL": "often",
    "OTEL_PERF_DEBUG_ADDR": "localhost",
    "OTEL_PERF_DEBUG_TOKEN": "two words",
    "OTEL_PERF_TRACEMALLOC": "many",
    "OTEL_PERF_PROFILING": "always",
    "OTEL_PERF_PROFILING_HZ": "fast",
    "OTEL_PERF_PROFILING_INTERVAL": "hourly",
    "OTEL_PERF_SPOOL_MAX_BYTES": "lots",
    "OTEL_PERF_OUTPUT_DIR": __file__,
}


# Any text is a well-formed path; whether the spool directory can be used is checked where it is used
# (tests/exporters/test_spool_choice.py).
CHECKED_WHERE_USED = {"OTEL_PERF_SPOOL_DIR"}


@pytest.mark.parametrize(("raw", "mode"), [("slow", "slow"), (" SLOW ", "slow"), ("on", True), ("0", False)])
def test_pool_spans_takes_slow_besides_true_and_false(raw: str, mode: bool | str) -> None:
    assert load_settings({"OTEL_PERF_POOL_SPANS": raw}).pool_spans == mode
    assert load_settings({}, pool_spans="slow").pool_spans == "slow"


def test_every_variable_has_a_malformed_case() -> None:
    """The table below covers every OTEL_PERF_* setting (a new setting needs its bad-value test)."""
    assert set(MALFORMED) | CHECKED_WHERE_USED == set(ENV_VARS)


@pytest.mark.parametrize("variable", sorted(MALFORMED))
def test_malformed_variable_warns_once_and_falls_back(
    variable: str, caplog: pytest.LogCaptureFixture
) -> None:
    """A malformed value logs one warning naming the variable, the value and the default, and never raises."""
    setting = next(s for s in SETTINGS if s.env == variable)
    env = {variable: MALFORMED[variable]}
    with caplog.at_level(logging.WARNING, logger="otel_perf"):
        first = load_settings(env)
        second = load_settings(env)
    warnings = [r.getMessage() for r in caplog.records if variable in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert repr(MALFORMED[variable]) in warnings[0]
    assert "instead" in warnings[0]
    assert getattr(first, setting.name) == getattr(second, setting.name) == setting.default


def test_list_variable_keeps_good_entries_and_names_bad_ones(caplog: pytest.LogCaptureFixture) -> None:
    """One typo in OTEL_PERF_TOOLS must not switch off the other tools."""
    with caplog.at_level(logging.WARNING, logger="otel_perf"):
        settings = load_settings({"OTEL_PERF_TOOLS": "app.tools:search, broken path ,app.tools:Agent.run"})
    assert settings.tools == ("app.tools:search", "app.tools:Agent.run")
    assert "OTEL_PERF_TOOLS" in caplog.text and "'broken path'" in caplog.text


def test_valid_values_are_parsed() -> None:
    """Typical values parse to the types the instrumentations use."""
    settings = load_settings({
        "OTEL_PERF_ENABLED": "false",
        "OTEL_PERF_MEMORY_LIMIT": "512MiB",
        "OTEL_PERF_MEMORY_THRESHOLD": "0.9",
        "OTEL_PERF_PARSERS_BUILTIN": "json, shlex",
        "OTEL_PERF_DEBUG_ADDR": "127.0.0.1:6060",
        "OTEL_PERF_SPOOL_MAX_BYTES": "1GiB",
    })
    assert settings.enabled is False
    assert settings.memory_limit == 512 * 1024**2
    assert settings.memory_threshold == 0.9
    assert settings.parsers_builtin == ("json", "shlex")
    assert settings.debug_addr == "127.0.0.1:6060"
    assert settings.spool_max_bytes == 1024**3
    assert settings.sources["memory_limit"] == "OTEL_PERF_MEMORY_LIMIT"


def test_empty_value_counts_as_unset() -> None:
    assert load_settings({"OTEL_PERF_MEMORY_THRESHOLD": "  "}).memory_threshold == 0.8


def test_arguments_override_environment() -> None:
    settings = load_settings({"OTEL_PERF_POOL_SPANS": "true"}, pool_spans=False, memory_limit="1GiB")
    assert settings.pool_spans is False
    assert settings.memory_limit == 1024**3
    assert settings.sources["pool_spans"] == "argument"


@pytest.mark.parametrize(
    ("argument", "value", "variable"),
    [
        ("memory_threshold", "abc", "OTEL_PERF_MEMORY_THRESHOLD"),
        ("memory_threshold", 1.5, "OTEL_PERF_MEMORY_THRESHOLD"),
        ("memory_limit", "12XB", "OTEL_PERF_MEMORY_LIMIT"),
        ("pool_spans", "perhaps", "OTEL_PERF_POOL_SPANS"),
        ("tools", ["not a path"], "OTEL_PERF_TOOLS"),
        ("debug_addr", "nohostport", "OTEL_PERF_DEBUG_ADDR"),
    ],
)
def test_invalid_argument_raises_config_error(argument: str, value: object, variable: str) -> None:
    """configure() arguments raise ConfigError (a ValueError) naming the variable they override."""
    with pytest.raises(ConfigError, match=variable) as info:
        load_settings({}, **{argument: value})
    assert isinstance(info.value, ValueError)


def test_unknown_argument_raises() -> None:
    with pytest.raises(ConfigError, match="memory_treshold"):
        load_settings({}, memory_treshold=0.5)


def test_settings_pickle_and_roundtrip_through_environment() -> None:
    """Settings travel to spawn workers by pickle, and to child processes as OTEL_PERF_* variables."""
    settings = load_settings({}, memory_limit="256MiB", parsers_builtin="json", tools=["a.b:c"])
    assert pickle.loads(pickle.dumps(settings)) == settings
    again = load_settings(settings_as_env(settings))
    assert again == settings


def test_builtin_none_and_all() -> None:
    assert load_settings({"OTEL_PERF_PARSERS_BUILTIN": "none"}).parsers_builtin == ()
    assert load_settings({"OTEL_PERF_PARSERS_BUILTIN": "ALL"}).parsers_builtin == BUILTIN_PARSERS


def test_environment_is_parsed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_PERF_MEMORY_THRESHOLD", "0.5")
    first = get_settings()
    monkeypatch.setenv("OTEL_PERF_MEMORY_THRESHOLD", "0.6")
    assert get_settings() is first
    assert first.memory_threshold == 0.5


def test_standard_genai_variable_turns_on_content_capture() -> None:
    env = {"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"}
    assert load_settings(env).tool_capture_content is True


def test_environment_variables_module_lists_every_setting() -> None:
    """Every OTEL_PERF_* setting is a launcher flag (the entry-point module exports it)."""
    exported = {name for name in dir(environment_variables) if name.startswith("OTEL_")}
    assert exported == set(ENV_VARS)
    assert sorted(environment_variables.__all__) == sorted(ENV_VARS)


@pytest.mark.parametrize(("text", "value"), [("1024", 1024), ("1KiB", 1024), ("1.5GiB", 1610612736),
                                             ("2MB", 2_000_000), ("3 mib", 3 * 1024**2)])
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


def test_defaults_match_dataclass() -> None:
    """The table's defaults and the Settings dataclass agree (one source of truth for the docs)."""
    defaults = Settings()
    for setting in SETTINGS:
        assert getattr(defaults, setting.name) == setting.default, setting.name


# A value of the right form outside its setting's range, and the value used instead (the nearest end).
OUT_OF_RANGE = [
    ("OTEL_PERF_TRACEMALLOC", "70000", 65535),
    ("OTEL_PERF_TRACEMALLOC", "-3", 0),
    ("OTEL_PERF_MEMORY_CHECK_INTERVAL", "1e10", 3600.0),
    ("OTEL_PERF_MEMORY_CHECK_INTERVAL", "1e-9", 0.1),
    ("OTEL_PERF_MEMORY_CHECK_INTERVAL", "inf", 3600.0),
    ("OTEL_PERF_EVENTLOOP_LAG_INTERVAL", "0", 0.01),
    ("OTEL_PERF_EVENTLOOP_LAG_INTERVAL", "86400", 3600.0),
    ("OTEL_PERF_PARSE_SPAN_MIN_DURATION", "-1", 0.0),
    ("OTEL_PERF_POOL_SPAN_MIN_DURATION", "-0.5", 0.0),
    ("OTEL_PERF_POOL_SPAN_MIN_DURATION", "86400", 3600.0),
    ("OTEL_PERF_PARSE_SPAN_MIN_BYTES", "-5", 0),
    ("OTEL_PERF_PARSE_SPAN_MIN_BYTES", "99999999999999999999", 1024**4),
    ("OTEL_PERF_MEMORY_THRESHOLD", "1.5", 1.0),
    ("OTEL_PERF_MEMORY_THRESHOLD", "0", 0.01),
    ("OTEL_PERF_MEMORY_LIMIT", "1KiB", 1024**2),
    ("OTEL_PERF_SPOOL_MAX_BYTES", "10", 1024**2),
    ("OTEL_PERF_SPOOL_MAX_BYTES", "9999999TiB", 1024**6),
    ("OTEL_PERF_PROFILING_HZ", "5000", 1000.0),
    ("OTEL_PERF_PROFILING_HZ", "0", 1.0),
    ("OTEL_PERF_PROFILING_INTERVAL", "0.01", 1.0),
    ("OTEL_PERF_PROFILING_INTERVAL", "86400", 3600.0),
]


@pytest.mark.parametrize(("variable", "raw", "used"), OUT_OF_RANGE)
def test_out_of_range_value_is_reported_once_and_clamped(
        variable: str, raw: str, used: float, caplog: pytest.LogCaptureFixture) -> None:
    """Out of range is reported like malformed: once, naming the variable, the value and the value used."""
    setting = next(s for s in SETTINGS if s.env == variable)
    with caplog.at_level(logging.WARNING, logger="otel_perf"):
        first = load_settings({variable: raw})
        second = load_settings({variable: raw})
    (message,) = [r.getMessage() for r in caplog.records]
    assert variable in message and repr(raw) in message and f"using {used!r} instead" in message
    assert setting.range_doc in message
    assert getattr(first, setting.name) == getattr(second, setting.name) == used
    assert type(getattr(first, setting.name)) is type(setting.default if setting.default is not None else 1)


def test_every_setting_states_its_range() -> None:
    """Each row says what it accepts (for the docs and the messages); numbers have both ends."""
    for setting in SETTINGS:
        assert setting.range_doc, setting.env
        numeric = isinstance(setting.default, (int, float)) and not isinstance(setting.default, bool)
        if numeric or setting.name == "memory_limit":
            assert setting.low is not None and setting.high is not None, setting.env


@pytest.mark.parametrize(("argument", "value"), [("tracemalloc", 70000), ("memory_check_interval", 1e-9),
                                                 ("memory_check_interval", 1e10), ("memory_threshold", 0),
                                                 ("profiling_hz", 5000), ("profiling_interval", 0)])
def test_out_of_range_argument_raises_config_error(argument: str, value: float) -> None:
    """A configure() argument outside its range raises, naming the variable and the range."""
    setting = next(s for s in SETTINGS if s.name == argument)
    with pytest.raises(ConfigError, match=setting.env) as info:
        load_settings({}, **{argument: value})
    assert setting.range_doc in str(info.value)


def test_a_child_process_of_the_tree_does_not_repeat_the_warnings(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """The root process reports a bad value; its children, which read the same environment, log it at
    debug level only, so the program's output does not get the same warning once per child."""
    monkeypatch.setenv("OTEL_PERF_ROOT_PID", "1")  # another process is the root
    with caplog.at_level(logging.DEBUG, logger="otel_perf"):
        load_settings({"OTEL_PERF_MEMORY_THRESHOLD": "abc"})
    assert [(r.levelno, "OTEL_PERF_MEMORY_THRESHOLD" in r.getMessage()) for r in caplog.records] == [
        (logging.DEBUG, True)]
    caplog.clear()
    _config._reset_for_tests()
    monkeypatch.setenv("OTEL_PERF_ROOT_PID", str(os.getpid()))  # this process is the root
    with caplog.at_level(logging.DEBUG, logger="otel_perf"):
        load_settings({"OTEL_PERF_MEMORY_THRESHOLD": "abc"})
    assert [r.levelno for r in caplog.records] == [logging.WARNING]


def test_check_environment_lists_problems_and_unknown_names_without_logging(
        caplog: pytest.LogCaptureFixture) -> None:
    """What otel-perf doctor lists: malformed and out-of-range values, misspelt names with the closest
    known one; otel-perf's own internal variables are not unknown. Nothing is logged."""
    env = {"OTEL_PERF_MEMORY_THRESHOLD": "abc", "OTEL_PERF_TRACEMALLOC": "70000", "OTEL_PERF_POOL_SPAN": "false",
           "OTEL_PERF_DEBUG_ADRESS": "127.0.0.1:6060", "OTEL_PERF_ROOT_PID": "1", "OTEL_PERF_ZZZ": "1"}
    with caplog.at_level(logging.DEBUG, logger="otel_perf"):
        settings, problems = check_environment(env)
    assert not caplog.records
    assert settings.tracemalloc == 65535
    by_name = {p.variable: p.message for p in problems}
    assert set(by_name) == {"OTEL_PERF_MEMORY_THRESHOLD", "OTEL_PERF_TRACEMALLOC", "OTEL_PERF_POOL_SPAN",
                            "OTEL_PERF_DEBUG_ADRESS", "OTEL_PERF_ZZZ"}
    assert "did you mean OTEL_PERF_POOL_SPANS?" in by_name["OTEL_PERF_POOL_SPAN"]
    assert "did you mean OTEL_PERF_DEBUG_ADDR?" in by_name["OTEL_PERF_DEBUG_ADRESS"]
    assert "not an otel-perf setting" in by_name["OTEL_PERF_ZZZ"]


def test_profiling_mode_is_case_insensitive_and_a_bad_argument_raises() -> None:
    """OTEL_PERF_PROFILING=CPU means cpu; configure(profiling="heap") is a mistake the caller can fix."""
    assert load_settings({"OTEL_PERF_PROFILING": " CPU "}).profiling == "cpu"
    assert load_settings({"OTEL_PERF_PROFILING": "wall"}).profiling == "wall"
    assert load_settings({}).profiling == "off"
    with pytest.raises(ConfigError, match="OTEL_PERF_PROFILING to be cpu, wall or off"):
        load_settings({}, profiling="heap")
