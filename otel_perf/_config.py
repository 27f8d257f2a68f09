"""Every ``OTEL_PERF_*`` setting in one table, parsed once.

Why this module exists: settings are read from the environment by both ways in (the launcher and
``configure()``) and by every instrumentation; one table keeps names, types, defaults, parsing and the
generated reference docs in step. Precedence is ``configure()`` argument > ``OTEL_PERF_*`` > standard
``OTEL_*`` > default, and an empty value counts as unset (STYLE.md, "Configuration and errors").

Every setting has a range (its row's ``range_doc``; numbers also ``low``/``high``). A malformed
environment value never raises into the host program: it logs one warning naming the variable, the value
and the default used instead; a number outside its range is reported the same way and clamped to the
nearest end of the range. Only the root process of a process tree warns (its children read the same
environment, so they would repeat the same lines into the program's output). A malformed or out-of-range
``configure()`` argument raises :class:`~otel_perf.errors.ConfigError`, because the caller can fix it.
"""

from __future__ import annotations

import difflib
import logging
import math
import os
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from otel_perf.errors import ConfigError

_logger = logging.getLogger("otel_perf")

BUILTIN_PARSERS: Final = ("json", "argparse", "shlex", "tomllib", "xml", "yaml")


# --- value parsers: each takes the raw string and returns the value or raises ValueError(expected) ---


def _parse_bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError("true or false")


def _parse_pool_spans(raw: str) -> bool | str:
    if raw.strip().lower() == "slow":
        return "slow"
    try:
        return _parse_bool(raw)
    except ValueError:
        raise ValueError("true, false or slow") from None


def _parse_seconds(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("a number of seconds") from None
    if math.isnan(value):
        raise ValueError("a number of seconds")
    return value


def _parse_ratio(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("a ratio between 0 and 1, such as 0.8") from None
    if math.isnan(value):
        raise ValueError("a ratio between 0 and 1, such as 0.8")
    return value


def _parse_int(raw: str) -> int:
    try:
        return int(raw.strip())
    except ValueError:
        raise ValueError("a whole number") from None


_SIZE_UNITS: Final = {
    "": 1, "b": 1,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
    "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4,
    "kb": 1000, "mb": 1000**2, "gb": 1000**3, "tb": 1000**4,
}
_SIZE_RE: Final = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_size(raw: str) -> int:
    """Parse a byte size such as ``536870912``, ``512MiB`` or ``1.5GiB``."""
    match = _SIZE_RE.match(raw)
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError("a number of bytes with an optional KiB, MiB or GiB suffix, such as 512MiB")
    value = int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])
    if value <= 0:
        raise ValueError("a size > 0, such as 512MiB")
    return value


_DOTTED_RE: Final = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


def parse_dotted_paths(raw: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split ``pkg.mod:func,pkg.mod:Class.method`` into (valid paths, malformed entries)."""
    good: list[str] = []
    bad: list[str] = []
    for entry in raw.split(","):
        entry = entry.strip()
        if not entry:
            continue
        (good if _DOTTED_RE.match(entry) else bad).append(entry)
    return tuple(good), tuple(bad)


def _parse_dotted(raw: str) -> tuple[str, ...]:
    good, bad = parse_dotted_paths(raw)
    if bad:
        # Report malformed entries and keep the good ones: one typo must not switch off the others.
        raise _PartialValue(good, f"entries of the form pkg.mod:func or pkg.mod:Class.method; "
                                  f"ignoring {', '.join(repr(b) for b in bad)}")
    return good


def _parse_builtin_parsers(raw: str) -> tuple[str, ...]:
    value = raw.strip().lower()
    if value == "all":
        return BUILTIN_PARSERS
    if value == "none":
        return ()
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    unknown = [n for n in names if n not in BUILTIN_PARSERS]
    if unknown:
        known = tuple(n for n in names if n in BUILTIN_PARSERS)
        if not known:
            raise ValueError(f"all, none, or names from {', '.join(BUILTIN_PARSERS)}")
        raise _PartialValue(known, f"all, none, or names from {', '.join(BUILTIN_PARSERS)}; "
                                   f"ignoring {', '.join(repr(u) for u in unknown)}")
    return names


def _parse_token(raw: str) -> str:
    value = raw.strip()
    # The token travels in an HTTP header: printable ASCII without spaces, within a header line's limit.
    if not all(33 <= ord(c) <= 126 for c in value) or len(value) > 4096:
        raise ValueError("a token of 1 to 4096 printable ASCII characters without spaces")
    return value


_PROFILING_MODES: Final = ("cpu", "wall", "off")


def _parse_profiling(raw: str) -> str:
    value = raw.strip().lower()
    if value not in _PROFILING_MODES:
        raise ValueError("cpu, wall or off")
    return value


def _parse_hz(raw: str) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ValueError("a number of samples per second") from None
    if math.isnan(value):
        raise ValueError("a number of samples per second")
    return value


def _parse_path(raw: str) -> str:
    # Whether the directory can be used is checked where it is used (durable export), which says why.
    return raw.strip()


def _parse_directory(raw: str) -> str:
    value = raw.strip()
    if os.path.exists(value) and not os.path.isdir(value):
        raise ValueError("a directory path (this path is an existing file)")
    return value


def parse_address(raw: str) -> tuple[str, int]:
    """Parse ``host:port`` (``[::1]:6060`` for IPv6; an empty host means 127.0.0.1)."""
    value = raw.strip()
    host, sep, port_text = value.rpartition(":")
    if not sep:
        raise ValueError("host:port, such as 127.0.0.1:6060")
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ValueError("host:port, such as 127.0.0.1:6060") from None
    if not 0 <= port <= 65535:
        raise ValueError("host:port with a port from 0 to 65535")
    return host, port


def _parse_address_str(raw: str) -> str:
    parse_address(raw)
    return raw.strip()


class _PartialValue(ValueError):
    """A value that is usable only in part (a list with bad entries, a number outside its range): warn
    about it and use ``usable``."""

    def __init__(self, usable: Any, expected: str) -> None:
        super().__init__(expected)
        self.usable = usable


@dataclass(frozen=True, slots=True)
class Setting:
    """One row of the settings table."""

    name: str  # the field of Settings
    env: str  # the OTEL_PERF_* variable
    default: Any
    parse: Callable[[str], Any]
    doc: str
    default_doc: str = ""
    also_env: tuple[str, ...] = ()  # standard OTEL_* variables consulted after env
    range_doc: str = ""  # the values it accepts, for the docs and the out-of-range message
    low: float | None = None  # numbers below are clamped to this
    high: float | None = None  # numbers above are clamped to this

    def parse_value(self, raw: str) -> Any:
        """Parse ``raw`` and check its range.

        Raises:
            _PartialValue: usable in part; ``usable`` is the value to use (e.g. clamped into the range).
            ValueError: malformed; the message says what was expected.
        """
        value = self.parse(raw)
        if self.low is not None and value < self.low:
            raise _PartialValue(type(value)(self.low), f"in the range {self.range_doc}")
        if self.high is not None and value > self.high:
            raise _PartialValue(type(value)(self.high), f"in the range {self.range_doc}")
        return value


_BOOL = "true or false (also 1/0, yes/no, on/off)"
_DOTTED = "comma-separated `pkg.mod:func` or `pkg.mod:Class.method`"
_PATH = "a directory path"
#: tracemalloc's own limit of frames per traceback (``tracemalloc.start()`` raises above it).
_TRACEMALLOC_MAX_FRAMES = 65535
_MIB = 1024**2
_EIB = 1024**6

SETTINGS: Final[tuple[Setting, ...]] = (
    Setting("enabled", "OTEL_PERF_ENABLED", True, _parse_bool, "Master switch: false turns otel-perf off.",
            range_doc=_BOOL),
    Setting("pool_spans", "OTEL_PERF_POOL_SPANS", True, _parse_pool_spans,
            "A span per pool job (pool metrics are always on); `slow`: a span only for a job slower than "
            "OTEL_PERF_POOL_SPAN_MIN_DURATION or failed, made after it with its real start and end.",
            range_doc=f"{_BOOL}, or `slow`"),
    Setting("pool_span_min_duration", "OTEL_PERF_POOL_SPAN_MIN_DURATION", 0.01, _parse_seconds,
            "Seconds; with OTEL_PERF_POOL_SPANS=slow, jobs at least this slow get a span.",
            range_doc="0 to 3600 seconds", low=0.0, high=3600.0),
    Setting("tools", "OTEL_PERF_TOOLS", (), _parse_dotted,
            "Dotted paths `pkg.mod:func,pkg.mod:Class.method` of callables to treat as tools.",
            range_doc=_DOTTED),
    Setting("tool_capture_content", "OTEL_PERF_TOOL_CAPTURE_CONTENT", False, _parse_bool,
            "Record tool arguments and results (JSON, truncated) on execute_tool spans.",
            also_env=("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT",), range_doc=_BOOL),
    Setting("subprocess_capture_args", "OTEL_PERF_SUBPROCESS_CAPTURE_ARGS", False, _parse_bool,
            "Record program arguments (`process.command_args`), secret-looking values redacted.",
            range_doc=_BOOL),
    Setting("parsers", "OTEL_PERF_PARSERS", (), _parse_dotted,
            "Dotted paths of the user's own parse functions.", range_doc=_DOTTED),
    Setting("parsers_builtin", "OTEL_PERF_PARSERS_BUILTIN", BUILTIN_PARSERS, _parse_builtin_parsers,
            "`all`, `none`, or a comma-separated list of built-in parser names "
            "(json, argparse, shlex, tomllib, xml, yaml).", default_doc="all",
            range_doc="`all`, `none` or names"),
    Setting("parse_span_min_duration", "OTEL_PERF_PARSE_SPAN_MIN_DURATION", 0.01, _parse_seconds,
            "Seconds; parses slower than this get a span.", range_doc="0 to 3600 seconds", low=0.0,
            high=3600.0),
    Setting("parse_span_min_bytes", "OTEL_PERF_PARSE_SPAN_MIN_BYTES", 1048576, _parse_int,
            "Bytes; parses of larger inputs get a span.", range_doc="0 to 1099511627776 bytes (1 TiB)",
            low=0, high=1024**4),
    Setting("memory_limit", "OTEL_PERF_MEMORY_LIMIT", None, parse_size,
            "Memory limit in bytes, with optional KiB/MiB/GiB suffix; default: detected from the cgroup, "
            "else physical memory.", default_doc="(detected)", range_doc="1MiB to 1EiB", low=_MIB,
            high=_EIB),
    Setting("memory_threshold", "OTEL_PERF_MEMORY_THRESHOLD", 0.8, _parse_ratio,
            "Pressure ratio (usage / limit) that counts as high.", range_doc="0.01 to 1", low=0.01,
            high=1.0),
    Setting("memory_cleanup", "OTEL_PERF_MEMORY_CLEANUP", False, _parse_bool,
            "Run gc.collect() and malloc_trim(0) when pressure is high.", range_doc=_BOOL),
    Setting("memory_check_interval", "OTEL_PERF_MEMORY_CHECK_INTERVAL", 5.0, _parse_seconds,
            "Seconds between memory-pressure checks.", range_doc="0.1 to 3600 seconds", low=0.1,
            high=3600.0),
    Setting("eventloop_lag_interval", "OTEL_PERF_EVENTLOOP_LAG_INTERVAL", 0.5, _parse_seconds,
            "Seconds between event-loop lag probes.", range_doc="0.01 to 3600 seconds", low=0.01,
            high=3600.0),
    Setting("debug_addr", "OTEL_PERF_DEBUG_ADDR", None, _parse_address_str,
            "host:port for the pprof debug server (off when unset).", default_doc="",
            range_doc="host:port, port 0 to 65535"),
    Setting("debug_token", "OTEL_PERF_DEBUG_TOKEN", None, _parse_token,
            "Bearer token every debug-server request must present; required for non-loopback binds.",
            default_doc="", range_doc="1 to 4096 printable ASCII characters, no spaces"),
    Setting("tracemalloc", "OTEL_PERF_TRACEMALLOC", 0, _parse_int,
            "Frames tracemalloc keeps from start-up; 0 starts it only when a heap profile asks.",
            range_doc=f"0 to {_TRACEMALLOC_MAX_FRAMES} frames", low=0, high=_TRACEMALLOC_MAX_FRAMES),
    Setting("profiling", "OTEL_PERF_PROFILING", "off", _parse_profiling,
            "Continuous profiling of every process, exported as OTLP profiles (where the traces go): `cpu` "
            "samples the threads that run, `wall` every thread; samples taken in a span link to it.",
            range_doc="`cpu`, `wall` or `off`"),
    Setting("profiling_hz", "OTEL_PERF_PROFILING_HZ", 100.0, _parse_hz,
            "Samples per second of continuous profiling.", range_doc="1 to 1000 per second", low=1.0,
            high=1000.0),
    Setting("profiling_interval", "OTEL_PERF_PROFILING_INTERVAL", 60.0, _parse_seconds,
            "Seconds per exported profile; a shutdown exports the last partial one.",
            range_doc="1 to 3600 seconds", low=1.0, high=3600.0),
    Setting("spool_dir", "OTEL_PERF_SPOOL_DIR", None, _parse_path,
            "Enables durable export: each batch is kept in this directory until the backend accepts it; "
            "an `otlp` exporter then spools too. A directory that cannot be used is reported once and "
            "export falls back to plain OTLP.", default_doc="",
            range_doc="a directory this process can create and write"),
    Setting("spool_max_bytes", "OTEL_PERF_SPOOL_MAX_BYTES", 268435456, parse_size,
            "Bound of the spool in bytes (oldest entries are dropped first).", range_doc="1MiB to 1EiB",
            low=_MIB, high=_EIB),
    Setting("output_dir", "OTEL_PERF_OUTPUT_DIR", "./otel-perf-data", _parse_directory,
            "Directory for OTLP JSON lines files when no OTLP endpoint is set.", range_doc=_PATH),
)

#: ``OTEL_PERF_*`` variables that are not settings: otel-perf sets them for its own child processes.
INTERNAL_ENV_VARS: Final = ("OTEL_PERF_ROOT_PID",)

SETTINGS_BY_NAME: Final = {s.name: s for s in SETTINGS}
ENV_VARS: Final = tuple(s.env for s in SETTINGS)


@dataclass(frozen=True)
class Settings:
    """The effective configuration. Build it with :func:`load_settings`; it pickles (spawn workers)."""

    enabled: bool = True
    pool_spans: bool | str = True  # True, False or "slow"
    pool_span_min_duration: float = 0.01
    tools: tuple[str, ...] = ()
    tool_capture_content: bool = False
    subprocess_capture_args: bool = False
    parsers: tuple[str, ...] = ()
    parsers_builtin: tuple[str, ...] = BUILTIN_PARSERS
    parse_span_min_duration: float = 0.01
    parse_span_min_bytes: int = 1048576
    memory_limit: int | None = None
    memory_threshold: float = 0.8
    memory_cleanup: bool = False
    memory_check_interval: float = 5.0
    eventloop_lag_interval: float = 0.5
    debug_addr: str | None = None
    debug_token: str | None = None
    tracemalloc: int = 0
    profiling: str = "off"
    profiling_hz: float = 100.0
    profiling_interval: float = 60.0
    spool_dir: str | None = None
    spool_max_bytes: int = 268435456
    output_dir: str = "./otel-perf-data"
    # Where each value came from: "argument", the variable's name, or "default".
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    def replace(self, **changes: Any) -> Settings:
        """Return a copy with ``changes`` validated as ``configure()`` arguments."""
        return load_settings(env={}, base=self, **changes)


@dataclass(frozen=True, slots=True)
class SettingProblem:
    """A malformed or out-of-range ``OTEL_PERF_*`` value, or an unknown ``OTEL_PERF_*`` name."""

    variable: str
    value: str
    message: str  # one sentence: what was expected, what was given, what is used instead


#: Set by the first otel-perf process of a process tree (``otel_perf._sdk.ROOT_MARKER``).
_ROOT_MARKER = "OTEL_PERF_ROOT_PID"

_warned: set[tuple[str, str]] = set()
_warned_lock = threading.Lock()


def _problem(variable: str, raw: str, expected: str, fallback: Any) -> SettingProblem:
    return SettingProblem(variable, raw, f"Expected {variable} to be {expected}, got {raw!r}; "
                                         f"using {_describe(fallback)} instead.")


def _warn_once(problem: SettingProblem) -> None:
    key = (problem.variable, problem.value)
    with _warned_lock:
        if key in _warned:
            return
        _warned.add(key)
    # The root process of the tree reports; its children read the same environment and would print the
    # same lines into the program's output again (a child's own values are still logged, at debug level).
    marker = os.environ.get(_ROOT_MARKER)
    level = logging.DEBUG if marker and marker != str(os.getpid()) else logging.WARNING
    _logger.log(level, "%s", problem.message)


def _describe(value: Any) -> str:
    if value is None:
        return "the default (unset)"
    if isinstance(value, tuple):
        return repr(",".join(value)) if value else "nothing"
    return repr(value)


def _validate_argument(setting: Setting, value: Any) -> Any:
    """Validate a ``configure()`` argument; raise ConfigError naming the variable it overrides."""
    if value is None and setting.default is None:
        return None
    try:
        if isinstance(value, str):
            return setting.parse_value(value)
        if isinstance(setting.default, bool):
            if isinstance(value, bool):
                return value
        elif isinstance(setting.default, tuple):
            if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
                return setting.parse_value(",".join(value)) if value else ()
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            return setting.parse_value(str(value))
    except ValueError as exc:  # malformed, or out of range (_PartialValue): the caller can fix it
        raise ConfigError(f"Expected {setting.env} to be {exc}, got {value!r}") from None
    raise ConfigError(f"Expected {setting.env} to be {type(setting.default).__name__}, got {value!r}")


def load_settings(
    env: Mapping[str, str] | None = None, *, base: Settings | None = None, **arguments: Any
) -> Settings:
    """Build :class:`Settings` from ``arguments`` > ``OTEL_PERF_*`` > ``OTEL_*`` > defaults.

    Malformed and out-of-range environment values are logged once each (see the module docstring).

    Args:
        env: the environment to read (default ``os.environ``).
        base: settings to start from instead of the defaults (for :meth:`Settings.replace`).
        **arguments: ``configure()`` arguments, by setting name (``memory_threshold=0.9``).

    Raises:
        ConfigError: an argument is unknown or invalid. Environment values never raise.
    """
    return _load(os.environ if env is None else env, base, arguments, _warn_once)


def check_environment(env: Mapping[str, str] | None = None) -> tuple[Settings, list[SettingProblem]]:
    """The settings ``env`` gives and every problem with it, without logging anything.

    Problems are the malformed and out-of-range values, and each ``OTEL_PERF_*`` name that is no setting
    (with the closest known name). ``otel-perf doctor`` lists them; ``otel-perf run`` uses this so that
    only the launched program reports them.
    """
    environ = os.environ if env is None else env
    problems: list[SettingProblem] = []
    settings = _load(environ, None, {}, problems.append)
    known = set(ENV_VARS) | set(INTERNAL_ENV_VARS)
    for name in sorted(environ):
        if name.startswith("OTEL_PERF_") and name not in known:
            close = difflib.get_close_matches(name, ENV_VARS, n=1, cutoff=0.6)
            hint = f"did you mean {close[0]}?" if close else "see docs/configuration.md for the settings"
            problems.append(SettingProblem(name, environ[name],
                                           f"{name} is not an otel-perf setting and is ignored; {hint}"))
    return settings, problems


def _load(environ: Mapping[str, str], base: Settings | None, arguments: dict[str, Any],
          report: Callable[[SettingProblem], None]) -> Settings:
    values: dict[str, Any] = {}
    sources: dict[str, str] = dict(base.sources) if base is not None else {}
    for setting in SETTINGS:
        if setting.name in arguments:
            values[setting.name] = _validate_argument(setting, arguments.pop(setting.name))
            sources[setting.name] = "argument"
            continue
        if base is not None:
            values[setting.name] = getattr(base, setting.name)
            continue
        value, source = setting.default, "default"
        for variable in (setting.env, *setting.also_env):
            raw = environ.get(variable)
            if raw is None or not raw.strip():
                continue  # an empty value counts as unset
            try:
                value, source = setting.parse_value(raw), variable
            except _PartialValue as exc:
                value, source = exc.usable, variable
                report(_problem(variable, raw, str(exc), exc.usable))
            except ValueError as exc:
                report(_problem(variable, raw, str(exc), setting.default))
            break
        values[setting.name] = value
        sources[setting.name] = source
    if arguments:
        raise ConfigError(
            f"Unknown configure() argument(s): {', '.join(sorted(arguments))}; "
            f"known: {', '.join(s.name for s in SETTINGS)}"
        )
    return Settings(**values, sources=sources)


_current: Settings | None = None
_current_lock = threading.Lock()


def get_settings() -> Settings:
    """The settings in force: those set by ``configure()``/the launcher, else parsed once from the env."""
    global _current
    if _current is None:
        with _current_lock:
            if _current is None:
                _current = load_settings()
    return _current


def set_settings(settings: Settings | None) -> None:
    """Install ``settings`` as the ones in force (``None``: parse the environment again when next asked)."""
    global _current
    with _current_lock:
        _current = settings


def settings_as_env(settings: Settings) -> dict[str, str]:
    """The ``OTEL_PERF_*`` variables that reproduce ``settings`` (for child processes)."""
    out: dict[str, str] = {}
    for setting in SETTINGS:
        value = getattr(settings, setting.name)
        if value is None:
            continue
        if isinstance(value, bool):
            out[setting.env] = "true" if value else "false"
        elif isinstance(value, tuple):
            out[setting.env] = ",".join(value) if value else ("none" if setting.name == "parsers_builtin" else "")
        else:
            out[setting.env] = str(value)
    return {k: v for k, v in out.items() if v != ""}


def describe_settings(settings: Settings) -> list[tuple[str, str, str]]:
    """Rows of (variable, effective value, source) for ``otel-perf doctor``."""
    rows = []
    for setting in SETTINGS:
        value = getattr(settings, setting.name)
        if setting.name == "debug_token" and value:
            shown = "***"
        elif isinstance(value, tuple):
            shown = ",".join(value)
        elif value is None:
            shown = ""
        else:
            shown = str(value)
        rows.append((setting.env, shown, settings.sources.get(setting.name, "default")))
    return rows


def _reset_for_tests() -> None:
    set_settings(None)
    with _warned_lock:
        _warned.clear()


__all__ = [
    "BUILTIN_PARSERS",
    "ENV_VARS",
    "INTERNAL_ENV_VARS",
    "SETTINGS",
    "Setting",
    "SettingProblem",
    "Settings",
    "check_environment",
    "describe_settings",
    "get_settings",
    "load_settings",
    "parse_address",
    "parse_dotted_paths",
    "parse_size",
    "set_settings",
    "settings_as_env",
]
