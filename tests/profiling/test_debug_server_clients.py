"""The debug server against hostile and clumsy clients: raw sockets that trickle, hoard connections or
vanish mid-request. Nothing they do may hold the host's threads or write into its stderr."""

from __future__ import annotations

import contextlib
import logging
import socket
import struct
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from otel_perf import start_debug_server
from otel_perf.profiling import server as server_module
from otel_perf.profiling.server import MAX_CONNECTIONS, REQUEST_TIMEOUT, DebugServer
from tests.conftest import clean_env


@pytest.fixture
def debug_server() -> Iterator[DebugServer]:
    server, _ = start_debug_server("127.0.0.1:0", token="")
    yield server
    server.stop()


def _connect(server: DebugServer) -> socket.socket:
    return socket.create_connection(server.server_address[:2], timeout=30)


def _closed_by_server(sock: socket.socket) -> bool:
    """Whether the server has closed the connection (without waiting)."""
    sock.setblocking(False)
    try:
        return sock.recv(65536) == b""
    except BlockingIOError:
        return False
    except ConnectionError:
        return True
    finally:
        sock.setblocking(True)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP reset, as a client that crashes does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def _response(sock: socket.socket) -> bytes:
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk


def test_a_request_that_trickles_in_is_cut_off_at_its_deadline(debug_server: DebugServer) -> None:
    """A byte every 0.2 s never trips a per-read timeout, but the whole request has a deadline: the server
    closes the connection once it passes and never answers it."""
    debug_server.request_timeout = 1.0
    request = b"GET /debug/pprof/cmdline HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200
    with _connect(debug_server) as sock:
        started = time.monotonic()
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except ConnectionError:
                break
            if _closed_by_server(sock):
                break
            assert time.monotonic() - started < 30, "the trickling client was never cut off"
            time.sleep(0.2)
        else:
            pytest.fail("the server read the whole trickled request")
        assert b"200 OK" not in b"".join(iter(lambda: _safe_recv(sock), b""))


def _safe_recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(65536)
    except ConnectionError:
        return b""


def test_a_client_that_sends_a_byte_every_20_seconds_is_cut_off(debug_server: DebugServer) -> None:
    """The issue's slowloris: request line, then silence where its next byte would come after 20 s. The
    server closes the connection at its request deadline, before that byte."""
    assert REQUEST_TIMEOUT < 20
    with _connect(debug_server) as sock:
        sock.sendall(b"GET /debug/pprof/cmdline HTTP/1.1\r\n")
        sock.settimeout(20)
        started = time.monotonic()
        assert _safe_recv(sock) == b""  # closed by the server, not our 20 s timeout (that raises)
        assert time.monotonic() - started < 20


def test_a_request_sent_in_pieces_within_the_deadline_is_served(debug_server: DebugServer) -> None:
    """Fragmented but timely requests (a slow network, a proxy) are read whole and answered."""
    with _connect(debug_server) as sock:
        for piece in (b"GET /debug/pp", b"rof/cmdline HT", b"TP/1.1\r\nHo", b"st: x\r\nConnection: close\r\n", b"\r\n"):
            sock.sendall(piece)
            time.sleep(0.05)
        reply = _response(sock)
    assert reply.startswith(b"HTTP/1.1 200 OK") and reply.endswith("\x00".join(sys.argv).encode())


def test_connections_beyond_the_cap_get_503_and_the_threads_stay_bounded(debug_server: DebugServer) -> None:
    """MAX_CONNECTIONS idle clients hold at most that many server threads; the next connection is answered
    503 at once; when the idle ones go, the server answers again."""
    threads_before = threading.active_count()
    idle = [_connect(debug_server) for _ in range(MAX_CONNECTIONS)]
    try:
        deadline = time.monotonic() + 30
        while threading.active_count() < threads_before + MAX_CONNECTIONS:
            assert time.monotonic() < deadline, "the idle connections were not all accepted"
            time.sleep(0.02)
        with _connect(debug_server) as extra:
            extra.sendall(b"GET /debug/pprof/cmdline HTTP/1.1\r\nHost: x\r\n\r\n")
            reply = _response(extra)
        assert reply.startswith(b"HTTP/1.1 503 ") and b"Retry-After: 1" in reply
        assert threading.active_count() <= threads_before + MAX_CONNECTIONS
    finally:
        for sock in idle:
            _reset(sock)
    deadline = time.monotonic() + 30
    while True:
        with _connect(debug_server) as sock:
            sock.sendall(b"GET /debug/pprof/cmdline HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            reply = _response(sock)
        if reply.startswith(b"HTTP/1.1 200 OK"):
            break
        assert time.monotonic() < deadline, reply[:100]
        time.sleep(0.05)


HOST = textwrap.dedent("""
    import sys
    from otel_perf import start_debug_server
    server, _ = start_debug_server("127.0.0.1:0")
    print(server.server_address[1], flush=True)
    sys.stdin.readline()
    server.stop()
    print("done", flush=True)
""")


def test_clients_that_vanish_early_print_nothing_into_the_programs_stderr() -> None:
    """Clients that reset the connection before, during and after their request: the host program's
    stderr stays empty (the server says so on the otel_perf logger, at debug level)."""
    host = subprocess.Popen([sys.executable, "-c", HOST], env=clean_env(), stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert host.stdout is not None and host.stdin is not None
        port = int(host.stdout.readline())
        requests = [b"", b"GET /debug/pprof/thr", b"GET /debug/pprof/threads?debug=2 HTTP/1.1\r\n\r\n",
                    b"GET /debug/pprof/profile?seconds=0.3 HTTP/1.1\r\n\r\n", b"GET /nosuch HTTP/1.1\r\n\r\n",
                    b"GET /debug/pprof/cmdline HTTP/1.1\r\n\r\nGET /debug/pprof/cmdline HTTP/1.1\r\n"]
        for request in requests:
            sock = socket.create_connection(("127.0.0.1", port), timeout=30)
            sock.sendall(request)
            time.sleep(0.2)
            _reset(sock)
        time.sleep(0.5)  # the profile ends and its answer meets the reset
        out, err = host.communicate("\n", timeout=60)
    finally:
        if host.poll() is None:
            host.kill()
            host.communicate(timeout=30)
    assert out.strip().endswith("done")
    assert err == ""


def test_an_unexpected_fault_goes_to_the_otel_perf_logger_once(
        debug_server: DebugServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
        capfd: pytest.CaptureFixture[str]) -> None:
    """A bug of ours in a handler: one warning with its traceback on the otel_perf logger, however many
    requests hit it, nothing printed to stderr directly, and the server keeps serving."""
    def broken(handler: object, query: object) -> None:
        raise RuntimeError("a bug in a route")

    monkeypatch.setitem(server_module._ROUTES, "/debug/pprof/cmdline", broken)
    with caplog.at_level(logging.DEBUG, logger="otel_perf"):
        for _ in range(2):
            with _connect(debug_server) as sock:
                sock.sendall(b"GET /debug/pprof/cmdline HTTP/1.1\r\nHost: x\r\n\r\n")
                with contextlib.suppress(ConnectionError):
                    _response(sock)
        deadline = time.monotonic() + 10
        while not [r for r in caplog.records if "a bug in a route" in r.getMessage()]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(0.2)
    faults = [r for r in caplog.records if "a bug in a route" in r.getMessage()]
    assert len(faults) == 1 and faults[0].levelno == logging.WARNING and faults[0].exc_info
    assert capfd.readouterr().err == ""
    with _connect(debug_server) as sock:
        sock.sendall(b"GET /debug/pprof/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert _response(sock).startswith(b"HTTP/1.1 200 OK")
