"""From a slow span to its hot functions: the profiles section of ``otel-perf report``.

Why this module exists: a trace shows that a tool call or a pool job was slow, not where it spent its
time. With continuous profiling on, every sample taken in a span links to it (the OTLP profile's link
table), so the run's files hold both sides: this module reads the spans and the profiles of OTLP JSON
lines files, picks the slowest spans of each kind (tool calls, pool jobs, programs), and sums the samples
linked to each span and to the spans under it (a tool call's subprocess, a job's nested work) by the
function they were taken in (the innermost frame: where the time went, not who called it), each with its
share of the span's samples. The HTML report draws each selected span's samples as a flame graph.

A span with no samples did not run while profiled: in CPU mode that means it waited (I/O, a lock, a child
process) rather than computed; a wall profile (``OTEL_PERF_PROFILING=wall``) shows where it waited.
"""

from __future__ import annotations

import html
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from otel_perf import _otlpjson
from otel_perf._semconv import (
    GEN_AI_OPERATION_EXECUTE_TOOL,
    GEN_AI_OPERATION_NAME,
    POOL_NAME,
    PROCESS_EXECUTABLE_NAME,
)
from otel_perf.profiling import flamegraph

__all__ = ["HotFunction", "HotSpan", "ProfileCollector", "html_section", "json_section", "markdown_lines",
           "text_lines"]

_SPAN_KIND_CLIENT = 3
#: The kinds of span the section looks at, with how each is recognised.
KINDS: tuple[tuple[str, Callable[[_otlpjson.Span], bool]], ...] = (
    ("tool call", lambda s: s.attributes.get(GEN_AI_OPERATION_NAME) == GEN_AI_OPERATION_EXECUTE_TOOL),
    ("pool job", lambda s: POOL_NAME in s.attributes),
    ("program", lambda s: PROCESS_EXECUTABLE_NAME in s.attributes and s.kind == _SPAN_KIND_CLIENT),
)
_Stack = tuple[tuple[str, str], ...]  # (function name, file) root first


@dataclass
class HotFunction:
    """A function the samples of a span were taken in (innermost frame), with its share of them."""

    name: str
    file: str
    value: int  # nanoseconds of the profile's sample type
    share: float  # of the span's samples' value


@dataclass
class HotSpan:
    """One of the slowest spans of its kind and where its samples were taken."""

    kind: str
    name: str
    trace_id: str
    span_id: str
    duration: float  # seconds
    process: str
    samples: int  # profile samples (distinct stacks) linked to the span and the spans under it
    value: int  # nanoseconds of the sample type, over the span and the spans under it
    sample_type: str  # "cpu" or "wall" (or "" when no sample was linked to it)
    functions: list[HotFunction] = field(default_factory=list)
    stacks: list[tuple[list[str], int]] = field(default_factory=list)  # (names root first, value)


def _process(resource: Mapping[str, Any]) -> str:
    name = str(resource.get("service.name") or "unknown service")
    return f"{name} (pid {resource['process.pid']})" if resource.get("process.pid") else name


class ProfileCollector:
    """Collects the spans and the span-linked profile samples of export requests, line by line."""

    def __init__(self) -> None:
        self.spans: list[_otlpjson.Span] = []
        self.profiles = 0
        # (trace id, span id) -> sample type -> stack -> [samples, value]
        self._linked: dict[tuple[str, str], dict[str, dict[_Stack, list[int]]]] = \
            defaultdict(lambda: defaultdict(dict))

    def add(self, request: Mapping[str, Any]) -> None:
        """Take the spans or profiles of one OTLP JSON export request (other signals are ignored).

        Raises:
            ValueError: a profiles request whose indices do not fit its tables (the message says which).
        """
        if "resourceSpans" in request:
            self.spans.extend(_otlpjson.spans(request))
        if "resourceProfiles" in request:
            self._add_profiles(request)

    def _add_profiles(self, request: Mapping[str, Any]) -> None:
        dictionary = request.get("dictionary") or {}
        strings = dictionary.get("stringTable") or [""]
        functions = dictionary.get("functionTable") or [{}]
        locations = dictionary.get("locationTable") or [{}]
        stacks = dictionary.get("stackTable") or [{}]
        links = dictionary.get("linkTable") or [{}]

        def at(table: list[Any], index: Any, what: str) -> Any:
            position = int(index or 0)
            if not 0 <= position < len(table):
                raise ValueError(f"{what} {position} is outside its table ({len(table)} entries)")
            return table[position]

        frames: dict[int, list[tuple[str, str]]] = {}  # location index -> frames root first

        def location_frames(index: int) -> list[tuple[str, str]]:
            cached = frames.get(index)
            if cached is None:
                cached = []
                for line in reversed(at(locations, index, "location_index").get("lines") or []):
                    function = at(functions, line.get("functionIndex"), "function_index")
                    cached.append((str(at(strings, function.get("nameStrindex"), "name_strindex")),
                                   str(at(strings, function.get("filenameStrindex"), "filename_strindex"))))
                frames[index] = cached
            return cached

        for resource_profiles in request.get("resourceProfiles") or []:
            for scope_profiles in resource_profiles.get("scopeProfiles") or []:
                for profile in scope_profiles.get("profiles") or []:
                    self.profiles += 1
                    sample_type = profile.get("sampleType") or {}
                    if isinstance(sample_type, list):  # an older release: repeated sample types
                        sample_type = sample_type[-1] if sample_type else {}
                    type_name = str(at(strings, sample_type.get("typeStrindex"), "type_strindex"))
                    for sample in profile.get("samples") or []:
                        link_index = int(sample.get("linkIndex") or 0)
                        if not link_index:
                            continue  # taken outside any span
                        link = at(links, link_index, "link_index")
                        key = (str(link.get("traceId", "")).lower(), str(link.get("spanId", "")).lower())
                        stack: list[tuple[str, str]] = []
                        location_indices = at(stacks, sample.get("stackIndex"), "stack_index").get(
                            "locationIndices") or []
                        for location in reversed(location_indices):  # OTLP lists the leaf first
                            stack.extend(location_frames(int(location)))
                        values = [int(v) for v in sample.get("values") or []]
                        timestamps = sample.get("timestampsUnixNano") or []
                        value = sum(values) if values else len(timestamps)
                        cell = self._linked[key][type_name].setdefault(tuple(stack), [0, 0])
                        cell[0] += max(len(values), len(timestamps), 1)
                        cell[1] += value

    def hot_spans(self, per_kind: int = 3, top: int = 5) -> list[HotSpan]:
        """The ``per_kind`` slowest spans of each kind, each with its ``top`` functions."""
        children: dict[tuple[str, str], list[str]] = defaultdict(list)
        for span in self.spans:
            if span.parent_span_id:
                children[(span.trace_id, span.parent_span_id)].append(span.span_id)
        seen: set[tuple[str, str]] = set()
        out: list[HotSpan] = []
        for kind, matches in KINDS:
            candidates = []
            for span in self.spans:
                key = (span.trace_id, span.span_id)
                if key not in seen and matches(span):
                    seen.add(key)  # a span delivered twice counts once
                    candidates.append(span)
            candidates.sort(key=lambda s: s.end - s.start, reverse=True)
            out.extend(self._hot_span(kind, span, children, top) for span in candidates[:per_kind])
        return out

    def _hot_span(self, kind: str, span: _otlpjson.Span, children: Mapping[tuple[str, str], list[str]],
                  top: int) -> HotSpan:
        trace_id = span.trace_id.lower()
        ids, pending = set(), [span.span_id]
        while pending:  # the span and every span under it, in its trace
            current = pending.pop()
            if current not in ids:
                ids.add(current)
                pending.extend(children.get((span.trace_id, current), ()))
        by_type: dict[str, dict[_Stack, list[int]]] = defaultdict(dict)
        for span_id in ids:
            for type_name, stacks in self._linked.get((trace_id, span_id.lower()), {}).items():
                merged = by_type[type_name]
                for stack, (count, value) in stacks.items():
                    cell = merged.setdefault(stack, [0, 0])
                    cell[0] += count
                    cell[1] += value
        hot = HotSpan(kind, span.name, span.trace_id, span.span_id, (span.end - span.start) / 1e9,
                      _process(span.resource), 0, 0, "")
        if not by_type:
            return hot
        hot.sample_type, stacks = max(by_type.items(), key=lambda item: sum(c[1] for c in item[1].values()))
        leaves: dict[tuple[str, str], int] = defaultdict(int)
        for stack, (count, value) in stacks.items():
            hot.samples += count
            hot.value += value
            if stack:
                leaves[stack[-1]] += value
            hot.stacks.append(([name for name, _ in stack], value))
        total = hot.value or 1
        hot.functions = [HotFunction(name, file, value, value / total)
                         for (name, file), value in sorted(leaves.items(), key=lambda item: -item[1])[:top]]
        return hot


# --- rendering -----------------------------------------------------------------------------------------

TITLE = "Slow spans and their hot functions"


def _seconds(value: float) -> str:
    return f"{value * 1000:.4g} ms" if value < 1 else f"{value:.4g} s"


def _headline(hot: HotSpan) -> str:
    return (f"{hot.kind} {hot.name!r}, {_seconds(hot.duration)} in {hot.process} (trace {hot.trace_id}, "
            f"span {hot.span_id})")


def _samples_line(hot: HotSpan) -> str:
    if not hot.samples:
        return ("no profile samples: it did not run while profiled (in CPU mode: it waited rather than "
                "computed; OTEL_PERF_PROFILING=wall shows where)")
    stacks = f"{hot.samples} distinct stack{'s' if hot.samples != 1 else ''}"
    return f"{_seconds(hot.value / 1e9)} of {hot.sample_type} time sampled ({stacks}); by function:"


def _intro(hot_spans: list[HotSpan], profiles: int) -> str | None:
    if not hot_spans:
        return None
    if not profiles:
        return ("No profiles in these files: run with OTEL_PERF_PROFILING=cpu to see where the slowest spans "
                "spent their time.")
    return (f"The slowest spans of each kind, from {profiles} profile(s): the functions their samples (and "
            "those of the spans under them) were taken in, with their share of the span's sampled time.")


def text_lines(hot_spans: list[HotSpan], profiles: int) -> list[str]:
    """The section as plain text (empty when the files hold none of these spans)."""
    intro = _intro(hot_spans, profiles)
    if intro is None:
        return []
    lines = [f"{TITLE}:", intro]
    if not profiles:
        return lines
    for hot in hot_spans:
        lines += ["", f"  {_headline(hot)}", f"    {_samples_line(hot)}"]
        lines += [f"    {f.share * 100:5.1f}%  {f.name}  ({f.file})" for f in hot.functions]
    return lines


def markdown_lines(hot_spans: list[HotSpan], profiles: int) -> list[str]:
    """The section as Markdown."""
    intro = _intro(hot_spans, profiles)
    if intro is None:
        return []
    lines = [f"### {TITLE}", "", intro]
    if not profiles:
        return lines
    for hot in hot_spans:
        lines += ["", f"- **{hot.kind} `{hot.name}`**, {_seconds(hot.duration)} in {hot.process} "
                      f"(trace `{hot.trace_id}`, span `{hot.span_id}`): {_samples_line(hot)}"]
        lines += [f"  - {f.share * 100:.1f}% `{f.name}` ({f.file})" for f in hot.functions]
    return lines


def json_section(hot_spans: list[HotSpan], profiles: int) -> dict[str, Any]:
    """The section for ``--format json``."""
    return {
        "profiles": profiles,
        "spans": [
            {"kind": h.kind, "name": h.name, "trace_id": h.trace_id, "span_id": h.span_id,
             "duration_seconds": h.duration, "process": h.process, "stacks": h.samples,
             "sample_type": h.sample_type, "value_nanoseconds": h.value,
             "functions": [{"name": f.name, "file": f.file, "share": round(f.share, 4),
                            "value_nanoseconds": f.value} for f in h.functions]}
            for h in hot_spans
        ],
    }


def html_section(hot_spans: list[HotSpan], profiles: int) -> tuple[str, bool]:
    """The section as HTML, and whether it holds flame graphs (the page then needs
    ``flamegraph.SCRIPT``, ``STYLE`` and ``EMBED_SCRIPT``)."""
    intro = _intro(hot_spans, profiles)
    if intro is None:
        return "", False
    esc = html.escape
    parts = [f"<h2>{esc(TITLE)}</h2><p>{esc(intro)}</p>"]
    graphs = False
    for number, hot in enumerate(hot_spans if profiles else []):
        rows = "".join(f"<tr><td>{f.share * 100:.1f}%</td><td><code>{esc(f.name)}</code></td>"
                       f"<td>{esc(f.file)}</td></tr>" for f in hot.functions)
        parts.append(f'<div class="hot-span"><h3>{esc(_headline(hot))}</h3><p>{esc(_samples_line(hot))}</p>')
        if rows:
            parts.append(f"<table><thead><tr><th>share</th><th>function</th><th>file</th></tr></thead>"
                         f"<tbody>{rows}</tbody></table>")
        if hot.stacks:
            tree = flamegraph.tree_from_stacks(hot.stacks)
            parts.append(flamegraph.render_fragment(
                tree, f"flame-{number}", caption=f"{hot.sample_type} time of the span's samples, root at the "
                                                 "top; click a frame to zoom, the grey bar to zoom out"))
            graphs = True
        parts.append("</div>")
    return "".join(parts), graphs
