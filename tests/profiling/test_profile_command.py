"""``otel-perf profile``: URL building, fetching with a token, saving, and the flame-graph page."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from otel_perf.cli import main
from otel_perf.profiling import flamegraph, pprof
from otel_perf.profiling.fetch import profile_url
from otel_perf.profiling.server import DebugServer, start_debug_server


@pytest.mark.parametrize(("base", "kind", "expected"), [
    ("http://127.0.0.1:6060", "cpu", "http://127.0.0.1:6060/debug/pprof/profile?seconds=10"),
    ("127.0.0.1:6060", "wall", "http://127.0.0.1:6060/debug/pprof/wall?seconds=10"),
    ("http://h:1/debug/pprof/", "heap", "http://h:1/debug/pprof/heap?seconds=10"),
    ("http://h:1/debug/pprof/threads", "threads", "http://h:1/debug/pprof/threads"),
    ("http://h:1/debug/pprof/profile?hz=50", "cpu", "http://h:1/debug/pprof/profile?hz=50&seconds=10"),
])
def test_profile_url_accepts_a_server_or_an_endpoint(base: str, kind: str, expected: str) -> None:
    """A bare server address gets the endpoint of the kind; a full endpoint URL is kept."""
    assert profile_url(base, kind, 10) == expected


@pytest.fixture
def token_server() -> Iterator[DebugServer]:
    server, _ = start_debug_server("127.0.0.1:0", token="tok")
    yield server
    server.stop()


def test_profile_command_sends_the_token_and_saves_the_profile(token_server: DebugServer, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The token comes from OTEL_PERF_DEBUG_TOKEN; progress and the result go to stderr."""
    monkeypatch.setenv("OTEL_PERF_DEBUG_TOKEN", "tok")
    out = tmp_path / "wall.pb.gz"
    page = tmp_path / "wall.html"
    code = main(["profile", token_server.url, "--wall", "--seconds", "1.2", "-o", str(out),
                 "--flamegraph", str(page)])
    err = capsys.readouterr().err
    assert code == 0, err
    assert re.search(r"wall: \[#+ *\]", err)  # the progress indicator (a line per second off a terminal)
    assert f"wrote {out}" in err
    assert pprof.decode(out.read_bytes()).sample_types[1].type == "wall"
    assert "<!DOCTYPE html>" in page.read_text()


def test_profile_command_without_the_token_reports_401(token_server: DebugServer, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str],
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OTEL_PERF_DEBUG_TOKEN", raising=False)
    code = main(["profile", token_server.url, "--threads", "-o", str(tmp_path / "t.pb.gz"), "-q"])
    assert code == 1
    assert "HTTP 401" in capsys.readouterr().err


def test_profile_command_reports_an_unreachable_server(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["profile", "http://127.0.0.1:9", "--threads", "-o", str(tmp_path / "t.pb.gz"), "-q"])
    assert code == 1
    assert "127.0.0.1:9" in capsys.readouterr().err


def _profile() -> pprof.Profile:
    b = pprof.ProfileBuilder([("samples", "count"), ("cpu", "nanoseconds")], default_sample_type="cpu")
    main_f, hot, cold = b.function("main"), b.function("hot</script><b>"), b.function("cold")
    b.sample([b.location(hot, 1), b.location(main_f, 1)], [9, 90], {"thread": "T"})
    b.sample([b.location(cold, 1), b.location(main_f, 1)], [1, 10], {"thread": "T"})
    return pprof.decode(b.encode())


def test_flame_graph_tree_merges_stacks_root_first() -> None:
    """Values add up the tree: root = thread = main = hot + cold."""
    tree = flamegraph.build_tree(_profile())
    assert tree["v"] == 100
    thread = tree["c"][0]
    assert thread["n"] == "thread T" and thread["v"] == 100
    main_node = thread["c"][0]
    assert main_node["n"] == "main"
    assert [(c["n"], c["v"]) for c in main_node["c"]] == [("hot</script><b>", 90), ("cold", 10)]


def test_flame_graph_page_is_self_contained_and_escapes_names() -> None:
    """No external resources; a function name cannot close the data script or inject markup."""
    page = flamegraph.render(_profile(), title="t <x>")
    assert "<script src" not in page and "<link" not in page and "http" not in page
    assert "hot</script>" not in page
    data = re.search(r'<script id="fg-data" type="application/json">(.*?)</script>', page, re.S)
    assert data is not None
    doc = json.loads(data.group(1))
    assert doc["root"]["c"][0]["c"][0]["c"][0]["n"] == "hot</script><b>"
    assert doc["unit"] == "s"
    assert "<title>t &lt;x&gt;</title>" in page


class _RawServer:
    """A loopback TCP server that answers every connection with fixed bytes (not necessarily HTTP)."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.socket.settimeout(0.2)
        self.port = self.socket.getsockname()[1]
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stopping.is_set():
            try:
                conn, _ = self.socket.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(5)
                with contextlib.suppress(OSError):
                    conn.recv(65536)
                    conn.sendall(self.reply)

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.socket.close()


@pytest.mark.parametrize("reply", [b"SSH-2.0-OpenSSH_9.2\r\n", b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",
                                   b"\x16\x03\x01\x00\x05hello"],
                         ids=["another-protocol", "cut-short", "binary"])
def test_profile_command_reports_a_server_that_does_not_speak_http_in_one_line(
        reply: bytes, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A wrong port answers with something else: exit 1 and one line naming the URL, no traceback."""
    server = _RawServer(reply)
    try:
        code = main(["profile", f"http://127.0.0.1:{server.port}", "--threads", "-q",
                     "-o", str(tmp_path / "t.pb.gz")])
    finally:
        server.stop()
    err = capsys.readouterr().err
    assert code == 1
    (line,) = err.strip().splitlines()
    assert f"http://127.0.0.1:{server.port}/debug/pprof/threads" in line
    assert not (tmp_path / "t.pb.gz").exists()


@pytest.mark.parametrize(("url", "why"), [("http://[::1", "Invalid IPv6 URL"),
                                          ("http://127.0.0.1:notaport", "Port"),
                                          ("http://127.0.0.1:99999", "Port out of range"),
                                          ("ftp://127.0.0.1/x", "http or https"),
                                          ("http://", "no host")])
def test_profile_command_rejects_a_bad_url_in_one_line(
        url: str, why: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A URL that cannot name a debug server: exit 2 (a usage error) and one line saying why."""
    code = main(["profile", url, "--threads", "-q", "-o", str(tmp_path / "t.pb.gz")])
    err = capsys.readouterr().err
    assert code == 2
    (line,) = err.strip().splitlines()
    assert repr(url) in line and why in line
