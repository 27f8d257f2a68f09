"""The debug server in process: routes, Go's status codes, the token, loopback-only binds, start-up,
fork and shutdown behaviour."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import tracemalloc
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator

import pytest

from otel_perf import ConfigError, start_debug_server
from otel_perf._config import load_settings
from otel_perf.profiling import pprof
from otel_perf.profiling import server as server_module
from otel_perf.profiling.server import DebugServer, is_loopback
from tests.conftest import PYTHON, clean_env


@pytest.fixture
def debug_server() -> Iterator[DebugServer]:
    server, _ = start_debug_server("127.0.0.1:0", token="")
    yield server
    server.stop()


def get(url: str, token: str | None = None, timeout: float = 30) -> tuple[int, bytes, dict[str, str]]:
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def test_index_lists_the_endpoints(debug_server: DebugServer) -> None:
    """/debug/pprof/ is an HTML page linking every profile."""
    status, body, headers = get(debug_server.url + "/debug/pprof/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for name in ("profile", "wall", "heap", "threads", "goroutine", "cmdline"):
        assert f'href="/debug/pprof/{name}"'.encode() in body


def test_cpu_profile_endpoint_returns_pprof(debug_server: DebugServer) -> None:
    """profile?seconds=N&hz=H returns a gzipped CPU profile of that length and rate."""
    status, body, headers = get(debug_server.url + "/debug/pprof/profile?seconds=0.3&hz=50")
    assert status == 200 and headers["Content-Type"] == "application/octet-stream"
    prof = pprof.decode(body)
    assert prof.sample_types[1].type == "cpu"
    assert prof.period == 20_000_000
    assert 250_000_000 <= prof.duration_nanos < 5_000_000_000


@pytest.mark.parametrize("query", ["seconds=abc", "seconds=-1", "seconds=0", "seconds=100000", "seconds=nan",
                                   "seconds=1&hz=0", "seconds=1&hz=x"])
def test_bad_seconds_or_hz_is_400(debug_server: DebugServer, query: str) -> None:
    """Like Go: a malformed or excessive duration (or rate) is a 400 with a message."""
    status, body, headers = get(f"{debug_server.url}/debug/pprof/profile?{query}")
    assert status == 400
    assert body.startswith(b"Bad Request")
    assert headers.get("X-Go-Pprof") == "1"


def test_unknown_path_is_404(debug_server: DebugServer) -> None:
    assert get(debug_server.url + "/debug/pprof/nope")[0] == 404


def test_concurrent_cpu_profile_gets_429(debug_server: DebugServer) -> None:
    """One CPU profile at a time: a second request meanwhile is refused with 429 and a message."""
    results: list[int] = []
    first = threading.Thread(target=lambda: results.append(get(debug_server.url +
                                                              "/debug/pprof/profile?seconds=5")[0]))
    first.start()
    try:
        deadline = time.monotonic() + 30  # until the first profile runs (it holds the CPU profiler)
        while not debug_server.cpu_lock.locked() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert debug_server.cpu_lock.locked()
        status, body, _ = get(debug_server.url + "/debug/pprof/profile?seconds=1")
        assert status == 429
        assert b"already in use" in body
        # a wall profile is a different profiler and may run at the same time
        assert get(debug_server.url + "/debug/pprof/wall?seconds=0.2")[0] == 200
    finally:
        first.join(30)
    assert results == [200]
    assert get(debug_server.url + "/debug/pprof/profile?seconds=0.1")[0] == 200  # free again


def test_stop_ends_a_running_profile_early(debug_server: DebugServer) -> None:
    """Stopping the server does not wait out a long profile."""
    results: list[int] = []
    t = threading.Thread(target=lambda: results.append(get(debug_server.url +
                                                          "/debug/pprof/profile?seconds=60")[0]))
    t.start()
    time.sleep(0.3)
    began = time.monotonic()
    debug_server.stop()
    t.join(10)
    assert not t.is_alive()
    assert time.monotonic() - began < 10


def test_threads_endpoint_debug_levels(debug_server: DebugServer) -> None:
    """threads (and goroutine): debug=2 full text, debug=1 grouped text, default pprof."""
    _, full, headers = get(debug_server.url + "/debug/pprof/threads?debug=2")
    assert headers["Content-Type"].startswith("text/plain") and b'"MainThread"' in full
    _, grouped, _ = get(debug_server.url + "/debug/pprof/goroutine?debug=1")
    assert grouped.startswith(b"threads profile: total ")
    _, binary, _ = get(debug_server.url + "/debug/pprof/goroutine")
    assert pprof.decode(binary).sample_types[0].type == "threads"


def test_cmdline_and_vars(debug_server: DebugServer) -> None:
    """cmdline is argv NUL-separated; /debug/vars is JSON about the process and otel-perf."""
    _, body, _ = get(debug_server.url + "/debug/pprof/cmdline")
    assert body.split(b"\x00") == [a.encode() for a in sys.argv]
    status, body, headers = get(debug_server.url + "/debug/vars")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    doc = json.loads(body)
    assert doc["pid"] == os.getpid()
    assert doc["threads"] >= 2
    assert "OTEL_PERF_DEBUG_ADDR" in doc["settings"]
    assert doc["debug_server"]["url"] == debug_server.url


def test_token_is_required_on_every_request_when_set() -> None:
    """With a token, requests without it or with a wrong one get 401; the right bearer gets through."""
    server, _ = start_debug_server("127.0.0.1:0", token="s3cret")
    try:
        for path in ("/debug/pprof/", "/debug/pprof/profile?seconds=0.1", "/debug/vars", "/nope"):
            assert get(server.url + path)[0] == 401
            assert get(server.url + path, token="wrong")[0] == 401
        status, _, headers = get(server.url + "/debug/pprof/")
        assert status == 401
        assert "Bearer" in headers.get("WWW-Authenticate", "")
        assert get(server.url + "/debug/pprof/", token="s3cret")[0] == 200
        assert get(server.url + "/debug/pprof/profile?seconds=0.1", token="s3cret")[0] == 200
    finally:
        server.stop()


def test_token_defaults_to_the_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    """OTEL_PERF_DEBUG_TOKEN protects a server started without an explicit token."""
    monkeypatch.setenv("OTEL_PERF_DEBUG_TOKEN", "from-env")
    server, _ = start_debug_server("127.0.0.1:0")
    try:
        assert get(server.url + "/debug/pprof/")[0] == 401
        assert get(server.url + "/debug/pprof/", token="from-env")[0] == 200
    finally:
        server.stop()


@pytest.mark.parametrize("addr", ["0.0.0.0:0", "[::]:0", "192.0.2.1:6060"])
def test_non_loopback_bind_without_token_is_refused(addr: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Stacks and memory are sensitive: other interfaces need a token, and the error says so."""
    monkeypatch.delenv("OTEL_PERF_DEBUG_TOKEN", raising=False)
    with pytest.raises(ConfigError, match="OTEL_PERF_DEBUG_TOKEN"):
        start_debug_server(addr)


def test_malformed_address_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="OTEL_PERF_DEBUG_ADDR"):
        start_debug_server("nonsense")


@pytest.mark.parametrize(("host", "expected"), [("127.0.0.1", True), ("127.3.4.5", True), ("::1", True),
                                                ("[::1]", True), ("localhost", True), ("0.0.0.0", False),
                                                ("::", False), ("192.0.2.1", False)])
def test_is_loopback(host: str, expected: bool) -> None:
    assert is_loopback(host) is expected


def test_startup_starts_the_server_in_the_root_process_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """_startup (called by otel_perf._sdk) starts the server once, in the root process, and tracemalloc
    with the configured number of frames."""
    monkeypatch.setattr(server_module, "_startup_server", None)
    was_tracing = tracemalloc.is_tracing()
    settings = load_settings({"OTEL_PERF_DEBUG_ADDR": "127.0.0.1:0", "OTEL_PERF_TRACEMALLOC": "5"})
    server_module._startup(settings, False)
    assert server_module._startup_server is None
    assert tracemalloc.is_tracing() is was_tracing
    try:
        server_module._startup(settings, True)
        started = server_module._startup_server
        assert started is not None
        assert tracemalloc.is_tracing() and tracemalloc.get_traceback_limit() == 5
        server_module._startup(settings, True)  # a second configure() does not bind again
        assert server_module._startup_server is started
        assert get(started.url + "/debug/pprof/")[0] == 200
    finally:
        if server_module._startup_server is not None:
            server_module._startup_server.stop()
        if not was_tracing:
            tracemalloc.stop()


def test_startup_logs_instead_of_raising_for_a_refused_address(monkeypatch: pytest.MonkeyPatch,
                                                                caplog: pytest.LogCaptureFixture) -> None:
    """A misconfigured OTEL_PERF_DEBUG_ADDR never breaks the program; the error is logged clearly."""
    monkeypatch.setattr(server_module, "_startup_server", None)
    settings = load_settings({"OTEL_PERF_DEBUG_ADDR": "0.0.0.0:0"})
    server_module._startup(settings, True)
    assert server_module._startup_server is None
    assert "debug server not started" in caplog.text and "OTEL_PERF_DEBUG_TOKEN" in caplog.text


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_closes_the_listening_socket(debug_server: DebugServer) -> None:
    """A forked child does not keep the parent's listening socket open, and stop() there returns."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.12+: fork() of a multi-threaded process
        pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0 if debug_server.socket.fileno() == -1 else 3
        try:
            debug_server.stop()
        except BaseException:
            code = 4
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert get(debug_server.url + "/debug/pprof/")[0] == 200  # the parent still serves


@pytest.mark.e2e
def test_program_exits_promptly_while_a_profile_is_being_taken(tmp_path: object) -> None:
    """Daemon threads: a program whose main code ends mid-profile exits without waiting for it."""
    code = (
        "import threading, time, urllib.request, otel_perf\n"
        "server, _ = otel_perf.start_debug_server('127.0.0.1:0')\n"
        "def fetch():\n"
        "    urllib.request.urlopen(server.url + '/debug/pprof/wall?seconds=120').read()\n"
        "threading.Thread(target=fetch, daemon=True).start()\n"
        "time.sleep(0.5)\n"
        "print('main done', flush=True)\n"
    )
    began = time.monotonic()
    done = subprocess.run([PYTHON, "-c", code], env=clean_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "main done" in done.stdout
    assert time.monotonic() - began < 30
