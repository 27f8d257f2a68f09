"""The debug server: Go's ``net/http/pprof`` endpoints for a Python process.

Why this module exists: a program that misbehaves in production should be inspectable without a restart
and without shipping a profiler per language: ``go tool pprof http://127.0.0.1:6060/debug/pprof/profile``
works against Go services, and with this server it works against Python ones too.

Endpoints (query parameters and status codes follow Go's):

* ``/debug/pprof/`` index;
* ``/debug/pprof/profile?seconds=30&hz=100`` CPU profile (threads that used CPU), one at a time: a second
  concurrent request gets 429;
* ``/debug/pprof/wall?seconds=30&hz=100`` wall-clock profile (every thread), also one at a time;
* ``/debug/pprof/heap?seconds=N&gc=1`` tracemalloc heap profile (see :mod:`otel_perf.profiling.heap`);
* ``/debug/pprof/threads?debug=0|1|2`` (also ``goroutine``) thread dump: pprof, grouped text, full text;
* ``/debug/pprof/cmdline`` the command line, NUL-separated;
* ``/debug/vars`` a JSON snapshot of the process and of otel-perf's state.

``seconds`` that is not a positive number, or more than :data:`MAX_SECONDS`, gives 400. The server binds
loopback addresses only, unless a token is configured (``OTEL_PERF_DEBUG_TOKEN``), and then every request
must send ``Authorization: Bearer <token>`` (else 401). It runs in daemon threads, so it never holds up the
program's exit, and a forked child closes the listening socket it inherited.

Clients cannot hold the host (this all happens before the token is checked, so it matters most for a
token-protected public bind): at most :data:`MAX_CONNECTIONS` connections are served at once, and one more
is answered 503 and closed at once; a request must arrive whole (request line and headers) within
:data:`REQUEST_TIMEOUT` seconds of the connection or of the previous response, however slowly its bytes
trickle in, and each write of a response gets :data:`WRITE_TIMEOUT` seconds. A client that goes away early
costs a debug line on the ``otel_perf`` logger; nothing is ever printed to the program's stderr but
through that logger (an unexpected fault: once).
"""

from __future__ import annotations

import gc
import hmac
import html
import ipaddress
import json
import logging
import math
import os
import socket
import sys
import threading
import time
import tracemalloc
import weakref
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from otel_perf._config import describe_settings, get_settings, parse_address
from otel_perf._safety import log_once
from otel_perf.errors import ConfigError
from otel_perf.profiling import heap, sampler, spans, threads
from otel_perf.version import __version__

if TYPE_CHECKING:
    from otel_perf._config import Settings

__all__ = [
    "DEFAULT_ADDR",
    "MAX_CONNECTIONS",
    "MAX_SECONDS",
    "REQUEST_TIMEOUT",
    "WRITE_TIMEOUT",
    "DebugServer",
    "is_loopback",
    "start_debug_server",
]

logger = logging.getLogger("otel_perf")

DEFAULT_ADDR = "127.0.0.1:6060"
#: The longest profile a request may ask for (Go answers 400 past its WriteTimeout; this is ours).
MAX_SECONDS = 600.0
DEFAULT_PROFILE_SECONDS = 30.0
#: Connections served at once (a thread each); more are answered 503 and closed.
MAX_CONNECTIONS = 32
#: Seconds a request (request line and headers) may take to arrive, from the connection or the previous
#: response: a client that sends a byte now and then is cut off, and an idle keep-alive connection ends.
REQUEST_TIMEOUT = 10.0
#: Seconds each write of a response may take (a client that does not read is cut off).
WRITE_TIMEOUT = 30.0

_INDEX = [
    ("profile", "CPU profile: threads that used CPU. ?seconds=30&hz=100"),
    ("wall", "Wall-clock profile: every thread, running or waiting. ?seconds=30&hz=100"),
    ("heap", "Memory in use, from tracemalloc (started for ?seconds=10 when not running). ?gc=1"),
    ("threads", "Stacks of all threads and asyncio tasks. "
                "?debug=2 full text, ?debug=1 grouped, ?debug=0 pprof"),
    ("goroutine", "Same as threads (Go's name)."),
    ("cmdline", "The program's command line."),
]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or a name) resolves to loopback addresses only."""
    name = host.strip("[]")
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(name, None)
    except OSError:
        return False
    return bool(infos) and all(ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback
                               for info in infos)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _RequestReader:
    """The handler's ``rfile``: reads a request within a whole-request deadline.

    A socket timeout bounds each ``recv`` only, so a client sending a byte every few seconds would never
    time out; here every ``recv`` may wait only for what is left of the deadline.
    """

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._buffer = bytearray()
        self.deadline = math.inf

    def _fill(self) -> bool:
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request did not arrive within its deadline")
        self._sock.settimeout(remaining)
        chunk = self._sock.recv(65536)
        self._buffer += chunk
        return bool(chunk)

    def _take(self, size: int) -> bytes:
        data = bytes(self._buffer[:size])
        del self._buffer[:size]
        return data

    def readline(self, limit: int = -1) -> bytes:
        while True:
            end = self._buffer.find(b"\n") + 1
            if end and (limit < 0 or end <= limit):
                return self._take(end)
            if 0 <= limit <= len(self._buffer):
                return self._take(limit)
            if not self._fill():
                return self._take(len(self._buffer))

    def read(self, size: int = -1) -> bytes:
        while size < 0 or len(self._buffer) < size:
            if not self._fill():
                break
        return self._take(len(self._buffer) if size < 0 else size)

    def close(self) -> None:
        self._buffer.clear()


_BUSY_REPLY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
               b"Retry-After: 1\r\nConnection: close\r\nContent-Length: 47\r\n\r\n"
               b"Too many connections to the debug server; retry\n")


class DebugServer(ThreadingHTTPServer):
    """The HTTP server; ``stop()`` ends it (also the profiles it is taking)."""

    daemon_threads = True
    allow_reuse_address = True
    max_connections = MAX_CONNECTIONS
    request_timeout = REQUEST_TIMEOUT
    write_timeout = WRITE_TIMEOUT

    def __init__(self, address: tuple[str, int], token: str | None) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self._slots = threading.BoundedSemaphore(self.max_connections)
        self.token = token
        self.pid = os.getpid()
        self.started = time.time()
        self.stopping = threading.Event()
        self.cpu_lock = threading.Lock()
        self.wall_lock = threading.Lock()
        self.serve_thread: threading.Thread | None = None
        super().__init__(address, _Handler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        text = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://[{text}]:{port}" if ":" in text else f"http://{text}:{port}"

    # --- one thread per connection, at most max_connections of them -------------------------------------

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self._refuse(request, client_address)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def _refuse(self, request: socket.socket, client_address: Any) -> None:
        """Answer 503 without waiting for the client (this runs in the thread that accepts)."""
        log_once(("debug-server-busy", self.server_address),
                 "otel-perf debug server: %d connections are open; more are refused (503) until some end. "
                 "Not logged again.", self.max_connections, level=logging.WARNING)
        try:
            request.setblocking(False)
            request.send(_BUSY_REPLY)
        except OSError:
            pass
        self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Log through the ``otel_perf`` logger, never print a traceback into the program's stderr."""
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):  # the client went away, or was too slow
            logger.debug("debug server: connection from %s ended: %r", client_address, exc)
            return
        log_once(("debug-server-error", type(exc).__name__),
                 "otel-perf debug server: a request from %s failed (%s: %s); the server goes on. Further "
                 "errors of this kind are not logged.", client_address, type(exc).__name__, exc,
                 exc_info=True)

    def shutdown(self) -> None:
        # In a forked child nothing serves this socket: waiting for serve_forever would never end.
        if os.getpid() == self.pid:
            super().shutdown()

    def stop(self) -> None:
        """Stop serving, end running profiles early and close the socket (idempotent)."""
        self.stopping.set()
        if os.getpid() == self.pid and self.serve_thread is not None and self.serve_thread.is_alive():
            super().shutdown()
        self.socket.close()
        _servers.discard(self)
        if not _servers:
            spans.release("debug-server")


class _Handler(BaseHTTPRequestHandler):
    server: DebugServer
    server_version = f"otel-perf/{__version__}"
    protocol_version = "HTTP/1.1"
    timeout = 60  # a client that connects and says nothing does not hold a thread for ever

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("debug server: " + format, *args)

    # --- plumbing ----------------------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.rfile = _RequestReader(self.connection)  # type: ignore[assignment]

    def handle_one_request(self) -> None:
        # The deadline covers the wait for the request too: an idle keep-alive connection ends with it.
        self.rfile.deadline = time.monotonic() + self.server.request_timeout  # type: ignore[attr-defined]
        super().handle_one_request()

    def end_headers(self) -> None:
        # Writing starts here: from now on the socket's timeout bounds each write (sendall counts the
        # whole write against it), not what was left of the request's deadline.
        self.connection.settimeout(self.server.write_timeout)
        super().end_headers()

    def do_GET(self) -> None:
        try:
            self._authorize()
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            path = url.path.rstrip("/")
            route = _ROUTES.get(path)
            if route is None:
                raise _HTTPError(404, f"Unknown profile: {path}")
            route(self, query)
        except _HTTPError as exc:
            self._error(exc.status, exc.message)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away

    def _authorize(self) -> None:
        token = self.server.token
        if not token:
            return
        given = self.headers.get("Authorization", "")
        expected = f"Bearer {token}"
        if not hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8", "replace")):
            raise _HTTPError(401, "Unauthorized: send Authorization: Bearer <OTEL_PERF_DEBUG_TOKEN>")

    def _error(self, status: int, message: str) -> None:
        body = (message + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("X-Go-Pprof", "1")  # go tool pprof prints the body of such errors
        if status == 401:
            self.send_header("WWW-Authenticate", 'Bearer realm="otel-perf"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _send(self, body: bytes, content_type: str, filename: str | None = None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("X-Content-Type-Options", "nosniff")
        if filename:
            self.send_header("Content-Disposition", f'attachment; filename="{filename}"')
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    @staticmethod
    def _seconds(query: dict[str, str], default: float | None) -> float | None:
        raw = query.get("seconds")
        if raw is None or raw == "":
            return default
        try:
            value = float(raw)
        except ValueError:
            raise _HTTPError(400, f"Bad Request: invalid seconds {raw!r}") from None
        if not 0 < value < float("inf"):
            raise _HTTPError(400, f"Bad Request: seconds must be positive, got {raw!r}")
        if value > MAX_SECONDS:
            raise _HTTPError(400, f"Bad Request: profile duration exceeds the server's limit of "
                                  f"{MAX_SECONDS:g} seconds")
        return value

    @staticmethod
    def _int(query: dict[str, str], name: str, default: int) -> int:
        raw = query.get(name)
        if raw is None or raw == "":
            return default
        try:
            return int(raw)
        except ValueError:
            raise _HTTPError(400, f"Bad Request: invalid {name} {raw!r}") from None

    # --- endpoints ---------------------------------------------------------------------------------------

    def _index(self, query: dict[str, str]) -> None:
        rows = "".join(
            f'<tr><td><a href="/debug/pprof/{name}">{name}</a></td><td>{html.escape(text)}</td></tr>'
            for name, text in _INDEX
        )
        body = (
            "<!DOCTYPE html><html><head><title>/debug/pprof/</title></head><body>"
            f"<h1>/debug/pprof/</h1><p>otel-perf {__version__}, pid {os.getpid()}</p>"
            f"<table>{rows}</table>"
            '<p><a href="/debug/pprof/threads?debug=2">full thread dump</a> · '
            '<a href="/debug/vars">/debug/vars</a></p>'
            "<p>Read a profile with <code>go tool pprof URL</code> or "
            "<code>otel-perf profile URL --flamegraph out.html</code>.</p></body></html>"
        )
        self._send(body.encode(), "text/html; charset=utf-8")

    def _sampled(self, query: dict[str, str], mode: sampler.Mode) -> None:
        seconds = self._seconds(query, DEFAULT_PROFILE_SECONDS)
        assert seconds is not None
        raw_hz = query.get("hz") or "100"
        try:
            hz = float(raw_hz)
        except ValueError:
            raise _HTTPError(400, f"Bad Request: invalid hz {raw_hz!r}") from None
        if not 1 <= hz <= 1000:
            raise _HTTPError(400, f"Bad Request: hz must be between 1 and 1000, got {raw_hz!r}")
        lock = self.server.cpu_lock if mode == "cpu" else self.server.wall_lock
        if not lock.acquire(blocking=False):
            kind = "CPU" if mode == "cpu" else "wall"
            raise _HTTPError(429, f"Could not enable {kind} profiling: {kind} profiling already in use")
        try:
            exclude = {self.server.serve_thread.ident} if self.server.serve_thread else set()
            data = sampler.Sampler(mode, hz, exclude={i for i in exclude if i}).run(seconds,
                                                                                   self.server.stopping)
        finally:
            lock.release()
        self._send(data, "application/octet-stream", "profile" if mode == "cpu" else "wall")

    def _profile(self, query: dict[str, str]) -> None:
        self._sampled(query, "cpu")

    def _wall(self, query: dict[str, str]) -> None:
        self._sampled(query, "wall")

    def _heap(self, query: dict[str, str]) -> None:
        seconds = self._seconds(query, None)
        if seconds is not None and self._int(query, "debug", 0):
            raise _HTTPError(400, "Bad Request: seconds and debug cannot be combined")
        frames = get_settings().tracemalloc or heap.DEFAULT_FRAMES
        try:
            data = heap.heap_profile(seconds, frames=frames, run_gc=self._int(query, "gc", 0) > 0,
                                     stop=self.server.stopping)
        except heap.HeapBusy as exc:
            raise _HTTPError(429, str(exc)) from None
        self._send(data, "application/octet-stream", "heap")

    def _threads(self, query: dict[str, str]) -> None:
        debug = self._int(query, "debug", 0)
        if debug >= 2:
            self._send(threads.dump_text().encode("utf-8", "replace"), "text/plain; charset=utf-8")
        elif debug == 1:
            self._send(threads.dump_grouped().encode("utf-8", "replace"), "text/plain; charset=utf-8")
        else:
            self._send(threads.dump_pprof(), "application/octet-stream", "threads")

    def _cmdline(self, query: dict[str, str]) -> None:
        self._send("\x00".join(sys.argv).encode("utf-8", "replace"), "text/plain; charset=utf-8")

    def _vars(self, query: dict[str, str]) -> None:
        body = json.dumps(debug_vars(self.server), indent=2, sort_keys=True, default=str)
        self._send(body.encode(), "application/json; charset=utf-8")


_ROUTES: dict[str, Any] = {
    "/debug/pprof": _Handler._index,
    "/debug/pprof/profile": _Handler._profile,
    "/debug/pprof/wall": _Handler._wall,
    "/debug/pprof/heap": _Handler._heap,
    "/debug/pprof/threads": _Handler._threads,
    "/debug/pprof/goroutine": _Handler._threads,
    "/debug/pprof/cmdline": _Handler._cmdline,
    "/debug/vars": _Handler._vars,
}


def debug_vars(server: DebugServer | None = None) -> dict[str, Any]:
    """The ``/debug/vars`` document: process facts, GC, tracemalloc, settings and instrumentors."""
    from otel_perf._process import current_handle

    out: dict[str, Any] = {
        "cmdline": sys.argv,
        "pid": os.getpid(),
        "ppid": os.getppid(),
        "python": sys.version,
        "otel_perf_version": __version__,
        "threads": threading.active_count(),
        "gc": {"counts": gc.get_count(), "thresholds": gc.get_threshold(), "stats": gc.get_stats()},
        "tracemalloc": {"tracing": tracemalloc.is_tracing()},
        "settings": {variable: value for variable, value, _ in describe_settings(get_settings())},
    }
    if server is not None:
        out["debug_server"] = {"url": server.url, "uptime_seconds": round(time.time() - server.started, 3)}
    if tracemalloc.is_tracing():
        current, peak = tracemalloc.get_traced_memory()
        out["tracemalloc"].update(traced_bytes=current, peak_traced_bytes=peak,
                                  frames=tracemalloc.get_traceback_limit())
    try:
        import psutil

        process = psutil.Process()
        with process.oneshot():
            memory = process.memory_info()
            cpu = process.cpu_times()
            out["process"] = {"rss_bytes": memory.rss, "vms_bytes": memory.vms,
                              "cpu_user_seconds": cpu.user, "cpu_system_seconds": cpu.system,
                              "num_threads": process.num_threads()}
    except Exception as exc:  # psutil may be refused /proc in a sandbox: report, don't fail the page
        out["process"] = {"error": f"{type(exc).__name__}: {exc}"}
    handle = current_handle()
    out["configured"] = handle is not None
    if handle is not None:
        out["service_name"] = handle.service_name
        out["instrumentors"] = sorted(type(i).__name__ for i in handle.instrumentors)
    return out


# --- starting, stopping, forking -------------------------------------------------------------------------

_servers: weakref.WeakSet[DebugServer] = weakref.WeakSet()
_startup_server: DebugServer | None = None
_start_lock = threading.Lock()


def start_debug_server(
    addr: str = DEFAULT_ADDR, token: str | None = None
) -> tuple[DebugServer, threading.Thread]:
    """Start the pprof debug server in a daemon thread.

    Usage::

        server, thread = otel_perf.start_debug_server("127.0.0.1:6060")
        # go tool pprof http://127.0.0.1:6060/debug/pprof/profile?seconds=10
        server.stop()

    Args:
        addr: ``host:port``; port 0 picks a free port (see ``server.server_address``).
        token: bearer token every request must present; defaults to ``OTEL_PERF_DEBUG_TOKEN``. Without a
            token only loopback addresses may be bound.

    Returns:
        The server (``.url``, ``.stop()``) and the thread serving it.

    Raises:
        ConfigError: ``addr`` is malformed, or not loopback and no token is set.
        OSError: the address cannot be bound (e.g. the port is in use).
    """
    try:
        host, port = parse_address(addr)
    except ValueError as exc:
        raise ConfigError(f"Expected OTEL_PERF_DEBUG_ADDR to be {exc}, got {addr!r}") from None
    if token is None:
        token = get_settings().debug_token
    if not token and not is_loopback(host):
        raise ConfigError(
            f"Expected OTEL_PERF_DEBUG_ADDR to be a loopback address (127.0.0.1, ::1, localhost) unless "
            f"OTEL_PERF_DEBUG_TOKEN is set, got {addr!r}: the debug server exposes stacks and memory and "
            f"refuses to listen on other interfaces without a token"
        )
    server = DebugServer((host, port), token or None)
    # Samples taken in a span carry its ids (trace_id, span_id, span_name labels).
    spans.install("debug-server")
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5},
                              name="otel-perf-debug-server", daemon=True)
    server.serve_thread = thread
    _servers.add(server)
    thread.start()
    return server, thread


def _close_in_child() -> None:
    """After fork: the child must not keep (or answer on) the parent's listening socket."""
    global _startup_server
    for server in list(_servers):
        try:
            server.socket.close()
        except OSError:
            pass
        server.stopping.set()
    _servers.clear()
    _startup_server = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_close_in_child)


def _startup(settings: Settings, is_root: bool) -> None:
    """Process start-up (called by ``otel_perf._sdk``): tracemalloc and the server, root process only."""
    global _startup_server
    if not is_root:
        return
    if settings.tracemalloc > 0 and not tracemalloc.is_tracing():
        tracemalloc.start(settings.tracemalloc)
    if not settings.debug_addr:
        return
    with _start_lock:
        if _startup_server is not None:
            return
        try:
            server, _ = start_debug_server(settings.debug_addr, settings.debug_token)
        except (ConfigError, OSError) as exc:
            log_once(("debug-server", settings.debug_addr), "otel-perf debug server not started: %s", exc,
                     level=logging.ERROR)
            return
        _startup_server = server
    logger.info("otel-perf debug server listening on %s/debug/pprof/", server.url)
