"""Programs run through ``subprocess`` and ``asyncio``: CLIENT spans from launch to reaping, with resources.

Why this module exists: an agent-like program spends much of its time in the programs it runs (tools are
often programs). Each run becomes a span that starts at launch and ends when the process is reaped, with
its exit code and, where the way of waiting reports them, the child's peak memory and CPU times; and the
child's environment carries ``TRACEPARENT``/``TRACESTATE``, so a child program run under otel-perf (or
any OpenTelemetry SDK that reads them) continues the same trace (``docs/tools.md``).

Usage::

    SubprocessInstrumentor().instrument(tracer_provider=tp, meter_provider=mp)
    subprocess.run(["git", "status"])       # span "git", CLIENT
    SubprocessInstrumentor().uninstrument()

What is patched, and why there: ``subprocess.Popen._execute_child`` (every ``run``/``call``/
``check_output`` and ``asyncio.create_subprocess_exec/shell`` launch goes through it, after ``Popen``
has checked its arguments and resolved the text encoding, so an ``EncodingWarning`` still names the
caller's line; where its signature is not the expected one, ``Popen.__init__``), ``Popen.wait`` and
``Popen._internal_poll`` (every way a process is reaped: ``wait``, ``communicate``, ``poll``, the context
manager, ``send_signal``, garbage collection and ``subprocess._cleanup``), ``Popen._try_wait`` (so that
blocking waits use ``os.wait4``, which reports the child's resource usage; only while ``os.waitpid`` is
the real one, so a cooperative ``waitpid`` such as gevent's, or a test's mock, is still what ``Popen``
calls) and asyncio's ``BaseSubprocessTransport._process_exited`` (asyncio reaps through its child
watcher, not ``Popen``). The class stays the same object, so ``isinstance``, subclasses and ``Popen``
attributes are unchanged.

The trace context reaches the child without changing what else it inherits: a given ``env`` is copied
with ``TRACEPARENT``/``TRACESTATE`` set (the caller's mapping is untouched); with ``env=None`` and a
``preexec_fn``, ``env`` stays ``None`` and the variables are set in the child just before the caller's
``preexec_fn`` runs (so what it sets still reaches the program); with neither, the child gets a copy of
``os.environ`` with them (a variable set below ``os.environ``, by ``os.putenv`` or C code, is not in
that copy).

Emits: span ``{process.executable.name}`` (CLIENT) with ``process.executable.name``, ``process.pid``,
``process.exit.code``, ``error.type`` (the exit code, or the signal's name, when non-zero; the exception
type when the launch fails), ``otel_perf.process.max_rss`` (By), ``otel_perf.process.cpu.user`` and
``otel_perf.process.cpu.system`` (s) when the reaping wait reported them, and ``process.command_args``
(secret-looking values redacted) only with ``OTEL_PERF_SUBPROCESS_CAPTURE_ARGS``. Histogram
``otel_perf.subprocess.duration`` (s; process.executable.name, error.type).
"""

from __future__ import annotations

import functools
import inspect
import logging
import os
import re
import signal
import subprocess  # the standard library's (absolute import), not this module
import sys
from collections.abc import Callable, Mapping, Sequence
from time import perf_counter
from typing import Any

from opentelemetry import propagate, trace
from opentelemetry.instrumentation.utils import is_instrumentation_enabled
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer

from otel_perf import _semconv as sc
from otel_perf._aggregate import AggregatedHistogram, Series
from otel_perf._error_type import error_type_of
from otel_perf._patching import Patcher
from otel_perf._safety import guard, log_once
from otel_perf.instrumentations import PerfInstrumentor

__all__ = ["SubprocessInstrumentor", "redact_args"]

_DURATION_SPEC = sc.metric("otel_perf.subprocess.duration")
_RUN_KEY = "_otel_perf_run"  # in a Popen's __dict__ from launch until reaped, then removed
_REDACTED = "REDACTED"
# Linux and the BSDs report ru_maxrss in KiB, macOS in bytes.
_MAXRSS_UNIT = 1 if sys.platform == "darwin" else 1024
try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]
_HAS_WAIT4 = hasattr(os, "wait4")
_HAS_ENVIRONB = hasattr(os, "environb")
_STALE_KEYS = ("TRACEPARENT", "TRACESTATE")

# The parameters of the launch method a run reads or changes (by name, wherever they are).
_LAUNCH_PARAMETERS = ("args", "executable", "preexec_fn", "env", "shell")
try:  # the C functions: os.waitpid may have been replaced already (gevent) when this module is imported
    from posix import wait4 as _real_wait4
    from posix import waitpid as _real_waitpid
except ImportError:  # not POSIX: blocking waits keep Popen's own way
    _real_waitpid = _real_wait4 = None  # type: ignore[assignment]


class _Positions:
    """Where the parameters of :data:`_LAUNCH_PARAMETERS` are in a launch method's ``(*args, **kwargs)``."""

    __slots__ = ("args", "env", "executable", "preexec_fn", "shell")

    def __init__(self, method: Callable[..., Any]) -> None:
        names = list(inspect.signature(method).parameters)[1:]  # after self
        # ValueError when a name is missing: not a launch method this module knows.
        self.args, self.executable, self.preexec_fn, self.env, self.shell = map(names.index, _LAUNCH_PARAMETERS)


def _launch_method() -> tuple[str, _Positions]:
    """``Popen._execute_child`` when its parameters are the known ones (start-up check), else the public
    ``Popen.__init__``: then an ``EncodingWarning`` of a text-mode launch names otel-perf's wrapper."""
    method = getattr(subprocess.Popen, "_execute_child", None)
    if method is not None:
        try:
            return "subprocess:Popen._execute_child", _Positions(method)
        except (TypeError, ValueError) as exc:
            log_once(("otel_perf_subprocess", "execute-child"),
                     "otel-perf: subprocess.Popen._execute_child is not what this otel-perf expects (%s); "
                     "wrapping Popen.__init__ instead", exc, level=logging.INFO)
    return "subprocess:Popen.__init__", _Positions(subprocess.Popen.__init__)


class _Active:
    """What a running :class:`SubprocessInstrumentor` provides; replaced whole."""

    __slots__ = ("capture_args", "histogram", "series", "tracer")

    def __init__(self, tracer: Tracer, histogram: AggregatedHistogram, capture_args: bool) -> None:
        self.tracer = tracer
        self.histogram = histogram
        self.capture_args = capture_args
        self.series: dict[str, Series] = {}


_active: _Active | None = None

# Resource usage reported by os.wait4 for a reaped pid, until the reaper's post-check takes it.
_rusage: dict[int, Any] = {}


class _Run:
    """One program run: its span, start time and executable name."""

    __slots__ = ("active", "name", "span", "start")

    def __init__(self, active: _Active, name: str, span: Span) -> None:
        self.active = active
        self.name = name
        self.span = span
        self.start = perf_counter()


# --- names, arguments and environment ----------------------------------------------------------------


def _argument(args: tuple[Any, ...], kwargs: Mapping[str, Any], at: int, name: str) -> Any:
    return args[at] if len(args) > at else kwargs.get(name)


def _executable_name(argv: Any, executable: Any, shell: bool) -> str:
    """``process.executable.name``: the program's base name (for a shell command, its first word)."""
    single = isinstance(argv, (str, bytes, os.PathLike))
    # Only a str/bytes/path or a sequence is looked into: another iterable is Popen's to consume.
    first: Any = argv if single else (argv[0] if isinstance(argv, Sequence) and argv else "")
    program: Any
    if shell:
        words = os.fsdecode(first).split()
        # Skip leading VAR=value assignments of a shell command line.
        program = next((w for w in words if "=" not in w), "sh")
    elif executable is not None:
        program = executable
    else:
        program = first
    return os.path.basename(os.fsdecode(program)) or "unknown"


_SECRET_NAME = re.compile(
    r"(?i)(pass(word|wd|phrase)?|pwd|secret|token|api[-_]?key|apikey|auth|credential|private[-_]?key|"
    r"access[-_]?key|session|cookie|signature)"
)
_KNOWN_TOKEN = re.compile(
    r"^(sk-|ghp_|gho_|ghs_|ghu_|github_pat_|glpat-|xox[abpr]-|AKIA|ASIA|eyJ)[\w\-.=]{8,}$"
)
_URL_CREDENTIALS = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*://[^:/@\s]*):[^@/\s]*@")
_AUTH_SCHEME = re.compile(r"(?i)\b(bearer|basic|token|digest)\s+[^\s'\"]+")
# Inside a shell command line (one argument with spaces): flags and assignments named like secrets.
_INLINE_FLAG = re.compile(
    r"(?i)(\s-{1,2}[\w\-]*(?:pass(?:word|wd)?|secret|token|api[-_]?key|auth)[\w\-]*)(=|\s+)([^\s'\"]+)"
)
_INLINE_ASSIGN = re.compile(r"(?i)\b(\w*(?:password|passwd|secret|token|api_?key)\w*)=([^\s'\"]+)")
_HEADER = re.compile(r"(?i)^\s*([\w\-]*(?:authorization|token|key|secret|cookie)[\w\-]*)\s*:\s*\S.*$")


def redact_args(argv: Sequence[str]) -> list[str]:
    """Program arguments with secret-looking values replaced by ``REDACTED``.

    Redacted: the value after a flag named like a secret (``--password x``, ``--api-key x``), the value of
    ``--token=x`` and ``SECRET_KEY=x``, passwords in URLs (``https://user:x@host``), authorization headers
    and schemes (``Authorization: Bearer x``), and well-known token shapes (``ghp_…``, ``sk-…``, ``AKIA…``,
    JWTs).
    """
    out: list[str] = []
    redact_next = False
    for arg in argv:
        if redact_next:
            out.append(_REDACTED)
            redact_next = False
            continue
        command_line = " " in arg  # a shell command line: redacted inside, below
        name, sep, value = arg.partition("=")
        if sep and value and not command_line and _SECRET_NAME.search(name):
            out.append(f"{name}={_REDACTED}")
            continue
        if arg.startswith("-") and not command_line and _SECRET_NAME.search(arg):
            out.append(arg)
            redact_next = True
            continue
        if _KNOWN_TOKEN.match(arg):
            out.append(_REDACTED)
            continue
        header = _HEADER.match(arg)
        if header:
            out.append(f"{header.group(1)}: {_REDACTED}")
            continue
        arg = _URL_CREDENTIALS.sub(rf"\1:{_REDACTED}@", arg)
        arg = _AUTH_SCHEME.sub(rf"\1 {_REDACTED}", arg)
        if command_line:
            arg = _INLINE_FLAG.sub(rf"\1\2{_REDACTED}", arg)
            arg = _INLINE_ASSIGN.sub(rf"\1={_REDACTED}", arg)
        out.append(arg)
    return out


def _command_args(argv: Any) -> list[str]:
    if isinstance(argv, (str, bytes, os.PathLike)):
        items = [os.fsdecode(argv)]
    elif isinstance(argv, Sequence):
        items = [os.fsdecode(a) if isinstance(a, (bytes, os.PathLike)) else str(a) for a in argv]
    else:
        items = []  # an iterator: Popen's to consume, not ours
    return redact_args(items)


def _child_env(env: Any, updates: Mapping[str, str]) -> Any:
    """A copy of the child's environment with the trace context set; the caller's mapping is untouched."""
    if env is None:
        if _HAS_ENVIRONB:
            # Bytes keys and values, as Popen passes them to exec: no decoding and re-encoding of every
            # variable. os.environ keeps them in a plain dict (``_data``, shared with os.environb);
            # copying that dict is a C-level copy, ~25x cheaper than os.environb.copy(), which calls
            # Python methods per variable (benchmarks/instrumentations/test_tools.py, subprocess-run).
            raw = getattr(os.environ, "_data", None)
            child_b: dict[bytes, bytes] = raw.copy() if type(raw) is dict else os.environb.copy()
            for key in _STALE_KEYS:
                child_b.pop(key.encode(), None)
            for key, value in updates.items():
                child_b[key.encode()] = value.encode()
            return child_b
        env = os.environ
    child: dict[Any, Any] = dict(env)
    for key in _STALE_KEYS:
        child.pop(key, None)
        child.pop(key.encode(), None)
    for key, value in updates.items():
        child.pop(key.encode(), None)
        child[key] = value
    return child


def _preexec_with_context(preexec_fn: Callable[[], Any], updates: Mapping[str, str]) -> Callable[[], Any]:
    """``preexec_fn`` that first sets the trace context in the child's own environment (``env=None``
    stays None: the program inherits the child's environment as the caller's ``preexec_fn`` leaves it)."""
    stale = [key for key in _STALE_KEYS if key not in updates]
    items = list(updates.items())

    def preexec_with_context() -> Any:
        for key in stale:
            os.unsetenv(key)
        for key, value in items:
            os.putenv(key, value)
        return preexec_fn()

    return preexec_with_context


def _with_context(args: tuple[Any, ...], kwargs: dict[str, Any], at: _Positions,
                  carrier: Mapping[str, str]) -> tuple[Any, ...]:
    """The launch arguments with the trace context for the child (``kwargs`` is changed in place)."""
    updates = {key.upper().replace("-", "_"): value for key, value in carrier.items()}
    env = _argument(args, kwargs, at.env, "env")
    preexec_fn = _argument(args, kwargs, at.preexec_fn, "preexec_fn")
    if env is None and preexec_fn is not None:
        name, at_, value = "preexec_fn", at.preexec_fn, _preexec_with_context(preexec_fn, updates)
    else:
        name, at_, value = "env", at.env, _child_env(env, updates)
    if len(args) > at_:
        return (*args[:at_], value, *args[at_ + 1:])
    kwargs[name] = value
    return args


# --- launch and reaping ------------------------------------------------------------------------------


@guard
def _begin(
    active: _Active, args: tuple[Any, ...], kwargs: dict[str, Any], at: _Positions
) -> tuple[_Run, tuple[Any, ...]] | None:
    """Start the run's span and put the trace context into the child's environment (in args/kwargs)."""
    argv = _argument(args, kwargs, at.args, "args")
    shell = bool(_argument(args, kwargs, at.shell, "shell"))
    name = _executable_name(argv, _argument(args, kwargs, at.executable, "executable"), shell)
    attributes: dict[str, Any] = {sc.PROCESS_EXECUTABLE_NAME: name}
    if active.capture_args:
        attributes[sc.PROCESS_COMMAND_ARGS] = _command_args(argv)
    span = active.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes)
    carrier: dict[str, str] = {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    if carrier:
        args = _with_context(args, kwargs, at, carrier)
    return _Run(active, name, span), args


@guard
def _launch_failed(run: _Run, exc: BaseException) -> None:
    error_type = error_type_of(exc)
    span = run.span
    span.set_attribute(sc.ERROR_TYPE, error_type)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
    run.active.histogram.record(perf_counter() - run.start,
                                {sc.PROCESS_EXECUTABLE_NAME: run.name, sc.ERROR_TYPE: error_type})
    span.end()


def _exit_error_type(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            pass
    return str(code)


@guard
def _reaped(popen: subprocess.Popen[Any]) -> None:
    """End the run's span once ``popen`` has a return code (called after every way of reaping)."""
    run = popen.__dict__.pop(_RUN_KEY, None)  # atomic: concurrent reapers end the span once
    if run is None:
        return
    duration = perf_counter() - run.start
    code = popen.returncode
    span = run.span
    usage = _rusage.pop(popen.pid, None)
    attributes: dict[str, Any] = {sc.PROCESS_PID: popen.pid, sc.PROCESS_EXIT_CODE: code}
    if usage is not None:
        max_rss = _childs_own_max_rss(usage.ru_maxrss * _MAXRSS_UNIT)
        if max_rss is not None:
            attributes[sc.PROCESS_MAX_RSS] = max_rss
        attributes[sc.PROCESS_CPU_USER] = usage.ru_utime
        attributes[sc.PROCESS_CPU_SYSTEM] = usage.ru_stime
    span.set_attributes(attributes)  # one call: the span's lock once, not per attribute
    active = run.active
    if code == 0:
        series = active.series.get(run.name)
        if series is None:
            series = active.series[run.name] = active.histogram.series({sc.PROCESS_EXECUTABLE_NAME: run.name})
        series.record(duration)
    else:
        error_type = _exit_error_type(code)
        span.set_attribute(sc.ERROR_TYPE, error_type)
        span.set_status(Status(StatusCode.ERROR, f"exit code {code}"))
        active.histogram.record(duration, {sc.PROCESS_EXECUTABLE_NAME: run.name, sc.ERROR_TYPE: error_type})
    span.end()


def _childs_own_max_rss(reported: int) -> int | None:
    """The child's peak RSS, when ``wait4`` reported the child's own; None when it may be its parent's.

    Linux's ``ru_maxrss`` of a child is the larger of its own peak and the peak of the image it had before
    ``exec``: a copy of this process (``fork``) or this process's own memory (``vfork``), whose peak is at
    most this process's peak so far. So a value above this process's peak is the child's own, and one at
    or below it may be ours (``/bin/true`` run from a 400 MiB parent reads 439 MiB): then nothing is
    reported rather than a wrong number.
    """
    if resource is None:
        return reported
    from otel_perf.instrumentations._runtime_process import own_peak_rss

    return reported if reported > own_peak_rss() else None


def _patch_launch(at: _Positions) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """The Patcher factory for the launch method (``Popen._execute_child``, else ``Popen.__init__``)."""

    def factory(original: Callable[..., None]) -> Callable[..., None]:
        @functools.wraps(original)
        def launch(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> None:
            active = _active
            if active is None or not is_instrumentation_enabled():  # suppress_instrumentation() is honoured
                return original(self, *args, **kwargs)
            begun = _begin(active, args, kwargs, at)
            if begun is None:  # our fault, logged once: launch untraced
                return original(self, *args, **kwargs)
            run, args = begun
            try:
                original(self, *args, **kwargs)
            except BaseException as exc:
                _launch_failed(run, exc)
                raise
            self.__dict__[_RUN_KEY] = run  # process.pid is set with the exit code, in one call
            return None

        return launch

    return factory


def _patch_wait(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def wait(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> Any:
        if _RUN_KEY not in self.__dict__:
            return original(self, *args, **kwargs)
        try:
            return original(self, *args, **kwargs)
        finally:
            if self.returncode is not None:
                _reaped(self)

    return wait


def _waitpid_with_rusage(pid: int, options: int) -> tuple[int, int]:
    """``os.waitpid`` through ``os.wait4``, keeping the resource usage of a reaped child."""
    reaped, status, usage = os.wait4(pid, options)
    if reaped == pid and reaped > 0:
        _rusage[reaped] = usage
    return reaped, status


def _poll_override() -> dict[str, Any]:
    """How to make ``Popen._internal_poll`` wait through :func:`_waitpid_with_rusage` on this Python."""
    if not _HAS_WAIT4 or _real_waitpid is None:
        return {}
    parameters = inspect.signature(subprocess.Popen._internal_poll).parameters  # type: ignore[attr-defined]
    # Only where Popen would call the real waitpid (not one replaced before subprocess was imported).
    if "_waitpid" in parameters and parameters["_waitpid"].default is _real_waitpid:  # 3.10-3.12
        return {"_waitpid": _waitpid_with_rusage}
    del_safe = getattr(subprocess, "_del_safe", None)
    if ("_del_safe" in parameters and isinstance(del_safe, type)
            and getattr(del_safe, "waitpid", None) is _real_waitpid):  # 3.13+
        return {"_del_safe": type("_del_safe", (del_safe,), {"waitpid": staticmethod(_waitpid_with_rusage)})}
    log_once(("otel_perf_subprocess", "internal-poll"),
             "otel-perf: subprocess.Popen._internal_poll is not what this otel-perf expects; programs reaped "
             "by poll() report no resource usage", level=logging.INFO)
    return {}


def _patch_poll(original: Callable[..., Any]) -> Callable[..., Any]:
    override = _poll_override()

    @functools.wraps(original)
    def _internal_poll(self: subprocess.Popen[Any], *args: Any, **kwargs: Any) -> Any:
        if _RUN_KEY not in self.__dict__:
            return original(self, *args, **kwargs)
        if override and not args and not kwargs.keys() & override.keys():
            kwargs.update(override)
        try:
            return original(self, *args, **kwargs)
        finally:
            if self.returncode is not None:
                _reaped(self)

    return _internal_poll


def _patch_try_wait(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _try_wait(self: subprocess.Popen[Any], wait_flags: int) -> tuple[int, int]:
        # Only while Popen's own _try_wait would call the real os.waitpid (subprocess.os is os): a replaced
        # one (gevent's cooperative waitpid, a test's mock) is what Popen must call; os.wait4 would bypass it.
        if (_RUN_KEY not in self.__dict__ or os.waitpid is not _real_waitpid
                or os.wait4 is not _real_wait4):
            return original(self, wait_flags)  # type: ignore[no-any-return]
        # Popen's own _try_wait, with os.wait4 instead of os.waitpid.
        try:
            pid, status = _waitpid_with_rusage(self.pid, wait_flags)
        except ChildProcessError:
            # This happens if SIGCLD is set to be ignored or waiting for child processes has otherwise
            # been disabled for our process. This child is dead, we can't get the status.
            pid, status = self.pid, 0
        return pid, status

    return _try_wait


def _patch_process_exited(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def _process_exited(self: Any, returncode: int) -> Any:
        popen = getattr(self, "_proc", None)
        try:
            return original(self, returncode)
        finally:
            if popen is not None and _RUN_KEY in popen.__dict__ and popen.returncode is not None:
                _reaped(popen)

    return _process_exited


class SubprocessInstrumentor(PerfInstrumentor):
    """Programs run through ``subprocess.Popen`` (so ``run``, ``call``, ``check_output``) and asyncio.

    Usage::

        SubprocessInstrumentor().instrument(tracer_provider=tp, meter_provider=mp)

    Emits the ``{process.executable.name}`` CLIENT span and the ``otel_perf.subprocess.duration``
    histogram; injects ``TRACEPARENT``/``TRACESTATE`` into a copy of the child's environment; reads
    ``OTEL_PERF_SUBPROCESS_CAPTURE_ARGS``. A program launched while instrumented and reaped after
    ``uninstrument()`` gets no span.
    """

    _patcher: Patcher | None = None
    _histogram: AggregatedHistogram | None = None

    def _start(self, **kwargs: Any) -> None:
        global _active
        histogram = AggregatedHistogram(_DURATION_SPEC.name, _DURATION_SPEC.unit, _DURATION_SPEC.description,
                                        sc.DURATION_BOUNDARIES)
        histogram.bind(self.meter)
        self._histogram = histogram
        patcher = self._patcher = Patcher("otel_perf_subprocess")
        path, positions = _launch_method()
        patcher.replace(path, _patch_launch(positions), in_place=True)
        patcher.replace("subprocess:Popen.wait", _patch_wait, in_place=True)
        patcher.replace("subprocess:Popen._internal_poll", _patch_poll, in_place=True)
        if _HAS_WAIT4 and hasattr(subprocess.Popen, "_try_wait"):
            patcher.replace("subprocess:Popen._try_wait", _patch_try_wait, in_place=True)
        patcher.replace("asyncio.base_subprocess:BaseSubprocessTransport._process_exited",
                        _patch_process_exited, in_place=True)
        _active = _Active(self.tracer, histogram, self.settings.subprocess_capture_args)

    def _stop(self) -> None:
        global _active
        _active = None
        if self._patcher is not None:
            self._patcher.unpatch_all()
            self._patcher = None
        if self._histogram is not None:
            self._histogram.unbind(self.meter)
            self._histogram = None
