"""Programs: CLIENT spans from launch to reaping, trace context in the child's environment, transparency."""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry.trace import SpanKind, StatusCode

from otel_perf import _semconv as sc
from otel_perf._config import load_settings
from otel_perf.instrumentations.subprocess import SubprocessInstrumentor, redact_args
from otel_perf.testing import histogram_points

PY = sys.executable
DURATION = "otel_perf.subprocess.duration"
PRINT_ENV = "import json, os; print(json.dumps(dict(os.environ)))"
POPEN_METHODS = ("_execute_child", "wait", "_internal_poll", "_try_wait")


def _instrument(tracer_provider: Any, meter_provider: Any, **settings: Any) -> SubprocessInstrumentor:
    instrumentor = SubprocessInstrumentor()
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider,
                            settings=load_settings(env={}, **settings))
    return instrumentor


@pytest.fixture
def instrumented(tracer_provider: Any, meter_provider: Any) -> Iterator[SubprocessInstrumentor]:
    instrumentor = _instrument(tracer_provider, meter_provider)
    yield instrumentor
    instrumentor.uninstrument()


def _traceparent(span: Any) -> str:
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags):02x}"


def _child_env(**kwargs: Any) -> dict[str, str]:
    out = subprocess.run([PY, "-c", PRINT_ENV], capture_output=True, text=True, check=True, timeout=30,
                         **kwargs).stdout
    return json.loads(out)  # type: ignore[no-any-return]


def test_run_emits_client_span_with_exit_code_and_resources(instrumented, span_exporter, metric_reader):
    """subprocess.run: one CLIENT span named after the program, with pid, exit code and child resources."""
    result = subprocess.run([PY, "-c", "print('hi')"], capture_output=True, text=True, timeout=30)
    assert (result.returncode, result.stdout) == (0, "hi\n")
    (span,) = span_exporter.get_finished_spans()
    assert span.name == os.path.basename(PY)
    assert span.kind is SpanKind.CLIENT
    assert span.attributes[sc.PROCESS_EXECUTABLE_NAME] == os.path.basename(PY)
    assert span.attributes[sc.PROCESS_EXIT_CODE] == 0
    assert isinstance(span.attributes[sc.PROCESS_PID], int)
    assert sc.PROCESS_MAX_RSS not in span.attributes  # a child smaller than this process: see below
    assert span.attributes[sc.PROCESS_CPU_USER] + span.attributes[sc.PROCESS_CPU_SYSTEM] > 0
    assert sc.PROCESS_COMMAND_ARGS not in span.attributes  # off by default
    assert span.status.status_code is StatusCode.UNSET
    (point,) = histogram_points(metric_reader, DURATION)
    assert dict(point.attributes) == {sc.PROCESS_EXECUTABLE_NAME: os.path.basename(PY)}
    assert point.count == 1


def test_non_zero_exit_is_an_error_and_check_raises_unchanged(instrumented, span_exporter, metric_reader):
    """A non-zero exit marks the span; check=True raises the same CalledProcessError as without us."""
    with pytest.raises(subprocess.CalledProcessError) as info:
        subprocess.run([PY, "-c", "import sys; print('out'); sys.exit(3)"], check=True, capture_output=True,
                       timeout=30)
    assert (info.value.returncode, info.value.stdout) == (3, b"out\n")
    assert info.value.cmd == [PY, "-c", "import sys; print('out'); sys.exit(3)"]
    (span,) = span_exporter.get_finished_spans()
    assert span.attributes[sc.PROCESS_EXIT_CODE] == 3
    assert span.attributes[sc.ERROR_TYPE] == "3"
    assert span.status.status_code is StatusCode.ERROR
    (point,) = histogram_points(metric_reader, DURATION)
    assert point.attributes[sc.ERROR_TYPE] == "3"


def test_launch_failure_propagates_the_same_error(instrumented, span_exporter):
    """A program that cannot start raises the same OSError; the span records it."""
    with pytest.raises(FileNotFoundError) as info:
        subprocess.run(["/nonexistent/program-xyz"], timeout=30)
    assert info.value.filename == "/nonexistent/program-xyz"
    (span,) = span_exporter.get_finished_spans()
    assert span.name == "program-xyz"
    assert span.attributes[sc.ERROR_TYPE] == "FileNotFoundError"
    assert sc.PROCESS_PID not in span.attributes


def test_timeout_kills_and_raises_as_without_instrumentation(instrumented, span_exporter):
    """run(timeout=) raises the same TimeoutExpired; the killed program's span says SIGKILL."""
    with pytest.raises(subprocess.TimeoutExpired) as info:
        subprocess.run([PY, "-c", "import time; time.sleep(30)"], timeout=0.5)
    assert info.value.cmd == [PY, "-c", "import time; time.sleep(30)"] and 0 < info.value.timeout <= 0.5
    (span,) = span_exporter.get_finished_spans()
    assert span.attributes[sc.PROCESS_EXIT_CODE] == -9
    assert span.attributes[sc.ERROR_TYPE] == "SIGKILL"


def test_child_environment_gets_trace_context_without_touching_callers(instrumented, tracer_provider,
                                                                       span_exporter, monkeypatch):
    """env=None: the child sees os.environ plus TRACEPARENT of its span; os.environ is not changed."""
    monkeypatch.setenv("TRACEPARENT", "00-" + "1" * 32 + "-" + "2" * 16 + "-01")  # from our own parent
    monkeypatch.setenv("TRACESTATE", "stale=1")
    before = dict(os.environ)
    with tracer_provider.get_tracer("t").start_as_current_span("parent") as parent:
        env = _child_env()
    assert dict(os.environ) == before
    (span,) = [s for s in span_exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert span.parent.span_id == parent.get_span_context().span_id
    assert env.pop("TRACEPARENT") == _traceparent(span)
    assert "TRACESTATE" not in env  # the stale one is not passed on
    expected = {k: v for k, v in before.items() if k not in ("TRACEPARENT", "TRACESTATE")}
    assert env == expected


def test_explicit_env_is_copied_and_gets_trace_context(instrumented, span_exporter):
    """An explicit env (str or bytes keys) is not mutated; the child gets exactly it plus TRACEPARENT."""
    given = {"ONLY": "1", "PATH": os.environ["PATH"]}
    snapshot = dict(given)
    env = _child_env(env=given)
    assert given == snapshot
    traceparent = env.pop("TRACEPARENT")
    assert env == {"ONLY": "1", "PATH": os.environ["PATH"], **({"LC_CTYPE": env["LC_CTYPE"]}
                                                              if "LC_CTYPE" in env else {})}
    given_b = {b"ONLY": b"2", b"PATH": os.environb[b"PATH"], b"TRACEPARENT": b"stale"}
    env_b = _child_env(env=given_b)
    assert given_b[b"TRACEPARENT"] == b"stale"
    assert env_b["ONLY"] == "2" and env_b["TRACEPARENT"] not in ("stale", traceparent)
    first, second = span_exporter.get_finished_spans()
    assert traceparent == _traceparent(first) and env_b["TRACEPARENT"] == _traceparent(second)


def test_env_passed_positionally_is_replaced_in_place(instrumented, span_exporter):
    """Popen's env given positionally (11th argument) gets the trace context too."""
    args = ([PY, "-c", "import os; print(os.environ['TRACEPARENT'])"], -1, None, None, subprocess.PIPE,
            None, None, True, False, None, {"PATH": os.environ["PATH"]})
    with subprocess.Popen(*args) as proc:
        out = proc.communicate(timeout=30)[0].decode().strip()
    (span,) = span_exporter.get_finished_spans()
    assert out == _traceparent(span)


def test_pass_fds_and_popen_attributes_are_unchanged(instrumented, span_exporter):
    """pass_fds, Popen attributes and the context manager behave as without instrumentation."""
    read_fd, write_fd = os.pipe()
    try:
        code = f"import os; os.write({write_fd}, b'via fd')"
        with subprocess.Popen([PY, "-c", code], pass_fds=(write_fd,), stdout=subprocess.PIPE) as proc:
            assert proc.args == [PY, "-c", code]
            assert proc.returncode is None and proc.pid > 0
            assert "_otel_perf_run" in vars(proc)
        assert proc.returncode == 0
        assert "_otel_perf_run" not in vars(proc)  # our bookkeeping is gone once reaped
        assert os.read(read_fd, 100) == b"via fd"
    finally:
        os.close(read_fd)
        os.close(write_fd)
    (span,) = span_exporter.get_finished_spans()
    assert span.attributes[sc.PROCESS_PID] == proc.pid


def test_span_ends_when_reaped_by_poll(instrumented, span_exporter):
    """poll() reaps: the span ends then, with resources (wait4 through poll)."""
    proc = subprocess.Popen([PY, "-c", "pass"])
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
    assert span_exporter.get_finished_spans() == ()
    assert proc.poll() == 0
    (span,) = span_exporter.get_finished_spans()
    assert span.attributes[sc.PROCESS_EXIT_CODE] == 0
    assert sc.PROCESS_CPU_USER in span.attributes


def _own_peak() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's ru_maxrss counts the pre-exec image")
def test_max_rss_of_a_small_child_is_not_the_large_parents(instrumented, span_exporter):
    """A tiny program run from a parent holding 400 MiB: its ru_maxrss (400+ MiB, the parent's image before
    exec) is not reported as the child's peak."""
    held = bytearray(b"x") * (400 * 1024 * 1024)
    try:
        assert subprocess.run(["/bin/true"], timeout=30).returncode == 0
    finally:
        del held
    (span,) = span_exporter.get_finished_spans()
    assert span.attributes[sc.PROCESS_EXIT_CODE] == 0
    assert sc.PROCESS_MAX_RSS not in span.attributes


def test_max_rss_of_a_child_larger_than_the_parent_is_its_own(instrumented, span_exporter):
    """A child that grows beyond anything this process held reports its own peak."""
    spike = _own_peak() + 128 * 1024 * 1024
    subprocess.run([PY, "-c", f"block = bytearray(b'x') * {spike}"], check=True, timeout=60)
    (span,) = span_exporter.get_finished_spans()
    assert spike <= span.attributes[sc.PROCESS_MAX_RSS] <= spike + 64 * 1024 * 1024


def test_span_ends_when_popen_is_garbage_collected(instrumented, span_exporter):
    """A Popen dropped without waiting is reaped by its finaliser; the span ends then."""
    proc = subprocess.Popen([PY, "-c", "import sys; sys.exit(4)"])
    os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)  # the stdlib's own "still running" warning
        del proc
        gc.collect()
    (span,) = span_exporter.get_finished_spans()
    assert span.attributes[sc.PROCESS_EXIT_CODE] == 4


def test_communicate_and_check_output(instrumented, span_exporter):
    """communicate() and check_output() return what they return without us, and end the span."""
    with subprocess.Popen([PY, "-c", "import sys; print(sys.stdin.read()[::-1])"], stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as proc:
        assert proc.communicate("abc", timeout=30) == ("cba\n", None)
    assert subprocess.check_output([PY, "-c", "print(7)"], timeout=30) == b"7\n"
    assert subprocess.call([PY, "-c", "raise SystemExit(2)"], timeout=30) == 2
    codes = [s.attributes[sc.PROCESS_EXIT_CODE] for s in span_exporter.get_finished_spans()]
    assert codes == [0, 0, 2]


def test_asyncio_subprocesses(instrumented, tracer_provider, span_exporter):
    """asyncio.create_subprocess_exec/shell: span from launch to exit, context in the child's env."""

    async def main() -> tuple[bytes, int]:
        with tracer_provider.get_tracer("t").start_as_current_span("parent"):
            proc = await asyncio.create_subprocess_exec(
                PY, "-c", "import os; print(os.environ['TRACEPARENT'])", stdout=subprocess.PIPE)
            out, _ = await proc.communicate()
            shell = await asyncio.create_subprocess_shell("exit 5")
            return out, await shell.wait()

    out, code = asyncio.run(main())
    assert code == 5
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    exec_span, shell_span = spans[os.path.basename(PY)], spans["exit"]
    assert out.decode().strip() == _traceparent(exec_span)
    assert exec_span.parent.span_id == spans["parent"].context.span_id
    assert exec_span.attributes[sc.PROCESS_EXIT_CODE] == 0
    assert shell_span.attributes[sc.ERROR_TYPE] == "5"


def test_suppressed_instrumentation_runs_programs_untraced(instrumented, span_exporter):
    """Inside suppress_instrumentation() (e.g. an exporter's own work) programs get no span or context."""
    from opentelemetry.instrumentation.utils import suppress_instrumentation

    with suppress_instrumentation():
        env = _child_env(env={"PATH": os.environ["PATH"]})
    assert "TRACEPARENT" not in env
    assert span_exporter.get_finished_spans() == ()


def test_capture_args_redacts_secrets(tracer_provider, meter_provider, span_exporter):
    """With OTEL_PERF_SUBPROCESS_CAPTURE_ARGS the arguments are recorded, secrets redacted."""
    instrumentor = _instrument(tracer_provider, meter_provider, subprocess_capture_args=True)
    try:
        subprocess.run([PY, "-c", "pass", "--password", "hunter2", "--token=abc", "plain"], timeout=30)
    finally:
        instrumentor.uninstrument()
    (span,) = span_exporter.get_finished_spans()
    assert list(span.attributes[sc.PROCESS_COMMAND_ARGS]) == [
        PY, "-c", "pass", "--password", "REDACTED", "--token=REDACTED", "plain"]


@pytest.mark.parametrize(("argv", "expected"), [
    (["curl", "-H", "Authorization: Bearer abc.def"], ["curl", "-H", "Authorization: REDACTED"]),
    (["git", "clone", "https://user:s3cret@host/repo"], ["git", "clone", "https://user:REDACTED@host/repo"]),
    (["env", "AWS_SECRET_ACCESS_KEY=xyz", "HOME=/h"], ["env", "AWS_SECRET_ACCESS_KEY=REDACTED", "HOME=/h"]),
    (["tool", "--api-key", "k", "-v"], ["tool", "--api-key", "REDACTED", "-v"]),
    (["gh", "ghp_abcdefghijklmnopqrstuvwxyz0123456789"], ["gh", "REDACTED"]),
    (["sh", "-c", "curl -H 'Authorization: Bearer tok' x"],
     ["sh", "-c", "curl -H 'Authorization: Bearer REDACTED' x"]),
    (["sh", "-c", "DB_PASSWORD=pw app --token t --api-key=k -v"],
     ["sh", "-c", "DB_PASSWORD=REDACTED app --token REDACTED --api-key=REDACTED -v"]),
    (["ls", "-la", "/tmp"], ["ls", "-la", "/tmp"]),
])
def test_redact_args(argv, expected):
    """Secret-looking values are redacted; ordinary arguments are kept."""
    assert redact_args(argv) == expected


def test_uninstrument_restores_originals_and_twice_is_harmless(tracer_provider, meter_provider,
                                                               span_exporter):
    """Instrumenting twice gives one span per run; uninstrument restores every original (identity)."""
    import asyncio.base_subprocess as base

    originals = {name: subprocess.Popen.__dict__[name] for name in POPEN_METHODS}
    codes = {name: method.__code__ for name, method in originals.items()}
    exited = base.BaseSubprocessTransport.__dict__["_process_exited"]
    exited_code = exited.__code__
    instrumentor = _instrument(tracer_provider, meter_provider)
    instrumentor.instrument(tracer_provider=tracer_provider, meter_provider=meter_provider)
    try:
        # Patched in place: the same function objects, running otel-perf's code.
        assert {name: subprocess.Popen.__dict__[name] for name in POPEN_METHODS} == originals
        assert all(originals[name].__code__ is not codes[name] for name in POPEN_METHODS)
        subprocess.run([PY, "-c", "pass"], timeout=30)
        assert len(span_exporter.get_finished_spans()) == 1
    finally:
        instrumentor.uninstrument()
    assert {name: subprocess.Popen.__dict__[name] for name in POPEN_METHODS} == originals
    assert {name: method.__code__ for name, method in originals.items()} == codes
    assert base.BaseSubprocessTransport.__dict__["_process_exited"] is exited and exited.__code__ is exited_code
    env = _child_env()
    assert "TRACEPARENT" not in env or env["TRACEPARENT"] == os.environ.get("TRACEPARENT")
    assert len(span_exporter.get_finished_spans()) == 1


def test_forked_child_runs_programs(instrumented, span_exporter):
    """A forked child of an instrumented process runs programs normally (its spans are its own)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            code = subprocess.run([PY, "-c", "raise SystemExit(6)"], timeout=30).returncode
        finally:
            os._exit(code if "code" in dir() else 99)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 6
    assert span_exporter.get_finished_spans() == ()  # the child's span stayed in the child


def test_preexec_fn_that_sets_a_variable_reaches_the_child(instrumented, tracer_provider, span_exporter,
                                                           monkeypatch):
    """CPython's test_preexec: with env=None, a variable a preexec_fn sets reaches the program (env stays
    None), and the program also gets the run's TRACEPARENT (set in the child before the preexec_fn runs)."""
    monkeypatch.setenv("TRACESTATE", "stale=1")
    with tracer_provider.get_tracer("t").start_as_current_span("parent"):
        out = subprocess.run([PY, "-c", PRINT_ENV], stdout=subprocess.PIPE, timeout=30, check=True,
                             preexec_fn=lambda: os.putenv("FRUIT", "apple"))
    env = json.loads(out.stdout)
    assert env["FRUIT"] == "apple"
    (span,) = [s for s in span_exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert env["TRACEPARENT"] == _traceparent(span)
    assert "TRACESTATE" not in env  # the stale one is not passed on
    assert "FRUIT" not in os.environ and os.environ["TRACESTATE"] == "stale=1"  # the parent is untouched


def test_preexec_fn_can_override_the_trace_context(instrumented):
    """The caller's preexec_fn runs last: what it sets wins, as without otel-perf."""
    out = subprocess.run([PY, "-c", PRINT_ENV], stdout=subprocess.PIPE, timeout=30, check=True,
                         preexec_fn=lambda: os.putenv("TRACEPARENT", "mine"))
    assert json.loads(out.stdout)["TRACEPARENT"] == "mine"


def test_wait_reports_a_stopped_status_as_popen_does(instrumented):
    """CPython's test_stopped: when os.waitpid is replaced (a test's mock, gevent's cooperative waitpid),
    wait() goes through it and returns what Popen makes of its status: -3 for a child stopped by signal 3."""
    from unittest import mock

    proc = subprocess.Popen([PY, "-c", "pass"])
    os.waitpid(proc.pid, 0)  # reap the real process first, as the CPython test does
    stopped = (3 << 8) | 0x7F  # W_STOPCODE(3)
    with mock.patch("subprocess.os.waitpid", return_value=(proc.pid, stopped)):
        assert proc.wait() == -3


def test_text_mode_launch_warns_about_the_encoding_at_the_callers_line(tmp_path):
    """CPython's test_encoding_warning, with otel_perf.configure(): under -X warn_default_encoding the
    EncodingWarnings of a text-mode run() name the caller's line, and otel-perf adds none of its own."""
    code = (
        "import otel_perf\n"
        "otel_perf.configure('encoding-check')\n"
        "from subprocess import *\n"
        "run('echo hello', shell=True, text=True)\n"
        "check_output('echo hello', shell=True, text=True)\n"
        "otel_perf.shutdown()\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env.update(OTEL_TRACES_EXPORTER="otel_perf_file", OTEL_METRICS_EXPORTER="otel_perf_file",
               OTEL_LOGS_EXPORTER="none", OTEL_PERF_OUTPUT_DIR=str(tmp_path))
    done = subprocess.run([PY, "-X", "warn_default_encoding", "-c", code], capture_output=True, env=env,
                          cwd=tmp_path, timeout=60)
    # Python 3.13 also prints each warning's source line (indented) for -c code; subprocess warns from 3.11.
    lines = [line for line in done.stderr.splitlines() if not line.startswith(b"  ")]
    if sys.version_info < (3, 11):
        assert lines == [], done.stderr
        return
    assert len(lines) == 2, done.stderr
    assert lines[0].startswith(b"<string>:4: EncodingWarning: ")
    assert lines[1].startswith(b"<string>:5: EncodingWarning: ")


def test_unexpected_execute_child_falls_back_to_wrapping_init(tracer_provider, meter_provider, span_exporter,
                                                              monkeypatch, caplog):
    """A Popen._execute_child without the parameters otel-perf expects (another Python): one INFO line,
    and Popen.__init__ is wrapped instead, with the same span and context hand-over."""
    original = subprocess.Popen._execute_child

    def _execute_child(self, *args, **kwargs):  # a signature that names nothing
        return original(self, *args, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "_execute_child", _execute_child)
    init = subprocess.Popen.__dict__["__init__"]
    init_code = init.__code__
    with caplog.at_level(logging.INFO, logger="otel_perf"):
        instrumentor = _instrument(tracer_provider, meter_provider)
    try:
        assert subprocess.Popen.__dict__["_execute_child"] is _execute_child
        assert init.__code__ is not init_code  # __init__ is the launch method now
        env = _child_env()
        (span,) = span_exporter.get_finished_spans()
        assert env["TRACEPARENT"] == _traceparent(span)
    finally:
        instrumentor.uninstrument()
    assert init.__code__ is init_code
    assert [r.levelno for r in caplog.records if "_execute_child" in r.getMessage()] == [logging.INFO]
