"""``otel-perf profile URL``: fetch a profile from a debug server, optionally as a flame graph.

Why this module exists: ``go tool pprof`` reads our profiles, but it cannot send the bearer token a
non-loopback server requires, and not every machine has Go. This command fetches a CPU, wall, heap or
threads profile (showing progress while the server samples), saves the pprof file and can write a
self-contained HTML flame graph next to it. ``--span SPAN_ID`` keeps only the samples taken while that
span was active (their ``span_id`` label), so a slow span seen in a trace can be looked at on its own.

Every failure is one line on stderr, never a traceback: exit 2 for a URL that cannot name a debug server,
1 for a server that cannot be reached, answers with an HTTP error, does not speak HTTP at all, or does not
send a profile.
"""

from __future__ import annotations

import argparse
import http.client
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlencode, urlsplit, urlunsplit

from otel_perf.profiling import flamegraph, pprof

__all__ = ["add_arguments", "fetch", "profile_url", "run"]

_ENDPOINTS = {"cpu": "profile", "wall": "wall", "heap": "heap", "threads": "threads"}
_DEFAULT_SECONDS = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``otel-perf profile`` arguments."""
    parser.description = ("Fetch a profile from an otel-perf debug server (OTEL_PERF_DEBUG_ADDR) and save it "
                          "as pprof; read it with `go tool pprof FILE` or pass --flamegraph.")
    parser.add_argument("url", help="the server, e.g. http://127.0.0.1:6060 (or a full /debug/pprof/... URL)")
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--cpu", dest="kind", action="store_const", const="cpu",
                      help="CPU profile: threads that used CPU (the default)")
    kind.add_argument("--wall", dest="kind", action="store_const", const="wall",
                      help="wall-clock profile: every thread, running or waiting")
    kind.add_argument("--heap", dest="kind", action="store_const", const="heap",
                      help="memory in use, from tracemalloc")
    kind.add_argument("--threads", dest="kind", action="store_const", const="threads",
                      help="stacks of every thread, right now")
    parser.set_defaults(kind="cpu")
    parser.add_argument("--seconds", type=float, default=None,
                        help=f"how long to sample (default {_DEFAULT_SECONDS:g}); for --heap, the growth "
                             "window (default: what is in use now, or 10 s if tracemalloc must be started)")
    parser.add_argument("--hz", type=float, default=None, help="samples per second (default 100)")
    parser.add_argument("-o", "--output", default=None, help="pprof output file (default KIND.pb.gz)")
    parser.add_argument("--flamegraph", metavar="HTML", default=None,
                        help="also write a self-contained HTML flame graph")
    parser.add_argument("--span", metavar="SPAN_ID", default=None,
                        help="keep only the samples taken in this span (16 hex digits, as traces show it)")
    parser.add_argument("--token", default=None,
                        help="bearer token (default: the OTEL_PERF_DEBUG_TOKEN environment variable)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")


def profile_url(base: str, kind: str, seconds: float | None = None, hz: float | None = None) -> str:
    """The endpoint URL for ``kind`` on the server ``base`` (a URL that names an endpoint is kept).

    Raises:
        ValueError: ``base`` is no http(s) URL with a host and a valid port; the message says what is wrong.
    """
    if "://" not in base:
        base = "http://" + base
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"the scheme must be http or https, not {parts.scheme!r}")
    if not parts.hostname:
        raise ValueError("it names no host")
    parts.port  # noqa: B018  (raises ValueError for a port that is not a number from 0 to 65535)
    path = parts.path.rstrip("/")
    if "/debug/pprof/" not in path + "/" or path.endswith("/debug/pprof"):
        path = path[: -len("/debug/pprof")] if path.endswith("/debug/pprof") else path
        path = f"{path}/debug/pprof/{_ENDPOINTS[kind]}"
    query: dict[str, str] = {}
    if seconds is not None and kind != "threads":
        query["seconds"] = f"{seconds:g}"
    if hz is not None and kind in ("cpu", "wall"):
        query["hz"] = f"{hz:g}"
    merged = "&".join(q for q in (parts.query, urlencode(query)) if q)
    return urlunsplit((parts.scheme, parts.netloc, path, merged, ""))


def fetch(url: str, token: str | None = None, timeout: float = 60.0) -> bytes:
    """GET ``url`` with the bearer token; raises ``urllib.error.HTTPError`` on an error status."""
    request = urllib.request.Request(url, headers={"User-Agent": "otel-perf-profile"})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        body: bytes = response.read()
        return body


def _progress(done: threading.Event, label: str, seconds: float | None) -> None:
    """Show how long the server has been sampling, until ``done``."""
    tty = sys.stderr.isatty()
    started = time.monotonic()
    last_line = -1
    while not done.wait(0.25 if tty else 1.0):
        elapsed = time.monotonic() - started
        if seconds:
            fraction = min(elapsed / seconds, 1.0)
            bar = "#" * int(fraction * 20)
            text = f"{label}: [{bar:<20}] {elapsed:4.0f}/{seconds:g} s"
        else:
            text = f"{label}: waiting {elapsed:4.0f} s"
        if tty:
            sys.stderr.write("\r" + text)
            sys.stderr.flush()
        elif int(elapsed) != last_line:
            last_line = int(elapsed)
            sys.stderr.write(text + "\n")
            sys.stderr.flush()
    if tty:
        sys.stderr.write("\r" + " " * 60 + "\r")
        sys.stderr.flush()


def _only_span(profile: pprof.Profile, span: str) -> tuple[pprof.Profile, str]:
    """The profile with only the samples labelled ``span_id=span``, or a message saying why there are none."""
    def span_of(sample: pprof.Sample) -> str:
        return next((label.value for label in sample.labels if label.key == "span_id"), "")

    kept = [sample for sample in profile.samples if span_of(sample) == span]
    if kept:
        profile.samples = kept
        return profile, ""
    spans = {span_of(sample) for sample in profile.samples} - {""}
    if not spans:
        return profile, (f"no sample of span {span}: no sample in this profile carries span labels (span "
                         "tracking starts with the debug server or OTEL_PERF_PROFILING, and only spans made "
                         "current are tracked)")
    return profile, (f"no sample of span {span} among the {len(profile.samples)} stacks of this profile "
                     f"({len(spans)} other spans were sampled): was the span running, and in this process, "
                     "while the server sampled?")


def run(args: argparse.Namespace) -> int:
    """Fetch, save, and optionally render; 0 on success, 1 on a server or network error."""
    kind: str = args.kind
    seconds: float | None = args.seconds
    if seconds is None and kind in ("cpu", "wall"):
        seconds = _DEFAULT_SECONDS
    if seconds is not None and seconds <= 0:
        print("otel-perf profile: --seconds must be positive", file=sys.stderr)
        return 2
    span: str | None = getattr(args, "span", None)
    if span is not None:
        span = span.strip().lower()
        if len(span) != 16 or any(c not in "0123456789abcdef" for c in span) or span == "0" * 16:
            print(f"otel-perf profile: --span {args.span!r} is not a span id: give the 16 hex digits a trace "
                  "shows (e.g. 00f067aa0ba902b7)", file=sys.stderr)
            return 2
    try:
        url = profile_url(args.url, kind, seconds, args.hz)
    except ValueError as exc:
        print(f"otel-perf profile: {args.url!r} is not a debug server URL ({exc}); give one such as "
              f"http://127.0.0.1:6060", file=sys.stderr)
        return 2
    token = args.token or os.environ.get("OTEL_PERF_DEBUG_TOKEN") or None
    output = Path(args.output or f"{kind}.pb.gz")
    waiting = seconds if seconds is not None else (10.0 if kind == "heap" else 0.0)
    done = threading.Event()
    progress = None
    if not args.quiet:
        print(f"otel-perf profile: fetching {kind} profile from {url}", file=sys.stderr)
        if kind != "threads":
            progress = threading.Thread(target=_progress, args=(done, kind, seconds), daemon=True)
            progress.start()
    try:
        data = fetch(url, token, timeout=waiting + 60.0)
    except urllib.error.HTTPError as exc:
        message = exc.read().decode("utf-8", "replace").strip()
        print(f"otel-perf profile: {url}: HTTP {exc.code}: {' '.join(message.split())}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        print(f"otel-perf profile: {url}: {reason}", file=sys.stderr)
        return 1
    except http.client.HTTPException as exc:  # not an HTTP server: a wrong port, another protocol
        detail = " ".join(str(exc).split())[:80]
        print(f"otel-perf profile: {url}: the server did not answer with HTTP ({type(exc).__name__}"
              f"{': ' + repr(detail) if detail else ''}); is this the debug server's address "
              f"(OTEL_PERF_DEBUG_ADDR)?", file=sys.stderr)
        return 1
    finally:
        done.set()
        if progress is not None:
            progress.join()
    try:
        profile = pprof.decode(data)
    except (ValueError, OSError, EOFError) as exc:
        print(f"otel-perf profile: {url} did not return a pprof profile ({exc})", file=sys.stderr)
        return 1
    if span is not None:
        profile, message = _only_span(profile, span)
        if message:
            print(f"otel-perf profile: {message}", file=sys.stderr)
            return 1
        data = pprof.encode(profile)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_bytes(data)
    if not args.quiet:
        print(f"otel-perf profile: wrote {output} ({len(profile.samples)} stacks, {len(data)} bytes); "
              f"view it with: go tool pprof -top {output}", file=sys.stderr)
    if args.flamegraph:
        page = Path(args.flamegraph)
        page.parent.mkdir(parents=True, exist_ok=True)
        title = f"{kind} profile: {url}" + (f", span {span}" if span else "")
        page.write_text(flamegraph.render(profile, title=title), encoding="utf-8")
        if not args.quiet:
            print(f"otel-perf profile: wrote flame graph {page}", file=sys.stderr)
    return 0
