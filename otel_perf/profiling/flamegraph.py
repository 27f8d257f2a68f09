"""A self-contained HTML flame graph of a pprof profile.

Why this module exists: ``go tool pprof -http`` needs Go and a browser pointed at a local server; a single
HTML file with the data and a small renderer inline can be attached to a ticket or opened from disk on any
machine, with no network access. Frames are drawn root at the top (an "icicle"); click a frame to zoom into
it, click the top bar to zoom out; hovering shows the value and share. :func:`render_fragment` gives the same
chart as a piece of a larger page (``otel-perf report --html`` draws one per slow span), with
:data:`SCRIPT` included once per page.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence
from typing import Any

from otel_perf.profiling.pprof import Profile

__all__ = ["EMBED_SCRIPT", "SCRIPT", "STYLE", "build_tree", "render", "render_fragment", "tree_from_stacks"]


def build_tree(profile: Profile, sample_index: int | None = None, by_thread: bool = True) -> dict[str, Any]:
    """Merge the profile's stacks into a tree ``{"n": name, "v": value, "c": [children]}``.

    With ``by_thread``, the first level under the root is the sample's ``thread`` label.
    """
    index = profile.sample_index() if sample_index is None else sample_index
    paths = []
    for names, sample in profile.stacks():
        value = sample.values[index] if index < len(sample.values) else 0
        path = list(names)
        if by_thread:
            thread = next((label.value for label in sample.labels if label.key == "thread"), "")
            if thread:
                path.insert(0, f"thread {thread}")
        paths.append((path, value))
    return tree_from_stacks(paths)


def tree_from_stacks(stacks: Iterable[tuple[Sequence[str], int]]) -> dict[str, Any]:
    """Merge (function names root first, value) pairs into a tree ``{"n": name, "v": value, "c": [...]}``,
    children largest first; stacks without a positive value are left out."""
    root: dict[str, Any] = {"n": "all", "v": 0, "c": {}}
    for path, value in stacks:
        if value <= 0:
            continue
        node = root
        node["v"] += value
        for name in path:
            children = node["c"]
            child = children.get(name)
            if child is None:
                child = children[name] = {"n": name, "v": 0, "c": {}}
            child["v"] += value
            node = child

    def finish(node: dict[str, Any]) -> dict[str, Any]:
        children = sorted(node["c"].values(), key=lambda c: -c["v"])
        return {"n": node["n"], "v": node["v"], "c": [finish(c) for c in children]}

    return finish(root)


_UNITS = {"nanoseconds": ("s", 1e-9), "bytes": ("B", 1.0), "count": ("", 1.0)}

#: The renderer: ``fgDraw(chart, info, doc)`` draws ``doc`` ({root, unit, scale}) into the ``chart``
#: element and shows hovered frames in ``info``; once per page.
SCRIPT = """
function fgDraw(chart, info, doc) {
  "use strict";
  var ROW = 18, MIN_PCT = 0.05;
  function fmt(v) {
    var x = v * doc.scale, u = doc.unit;
    if (u === "s") { return x >= 1 ? x.toFixed(2) + " s" : (x * 1000).toFixed(1) + " ms"; }
    if (u === "B") {
      return x >= 1048576 ? (x / 1048576).toFixed(1) + " MiB" : (x / 1024).toFixed(1) + " KiB";
    }
    return String(x);
  }
  function color(name) {
    var h = 0;
    for (var i = 0; i < name.length; i++) { h = (h * 31 + name.charCodeAt(i)) >>> 0; }
    if (name.indexOf("thread ") === 0) { return "hsl(210, 60%, 80%)"; }
    return "hsl(" + (10 + h % 45) + ", " + (70 + h % 25) + "%, " + (55 + h % 15) + "%)";
  }
  function draw(focus, path) {
    chart.textContent = "";
    var total = doc.root.v || 1, depthMax = 0;
    function add(node, depth, left, width, isPath) {
      var pct = 100 * width;
      if (pct < MIN_PCT) { return; }
      depthMax = Math.max(depthMax, depth);
      var el = document.createElement("div");
      el.className = "fg-frame";
      el.style.left = (100 * left) + "%";
      el.style.width = pct + "%";
      el.style.top = (depth * ROW) + "px";
      el.style.background = isPath ? "#ddd" : color(node.n);
      el.textContent = node.n;
      el.title = node.n + " \\u2014 " + fmt(node.v) + " (" + (100 * node.v / total).toFixed(2) + "%)";
      el.addEventListener("click", function () {
        if (isPath) { draw(doc.root, [doc.root]); } else { draw(node, path.concat(node)); }
      });
      el.addEventListener("mouseover", function () { info.textContent = el.title; });
      chart.appendChild(el);
      if (!isPath) {
        var x = left;
        for (var i = 0; i < node.c.length; i++) {
          var w = width * node.c[i].v / (node.v || 1);
          add(node.c[i], depth + 1, x, w, false);
          x += w;
        }
      }
    }
    for (var i = 0; i < path.length - 1; i++) { add(path[i], i, 0, 1, true); }
    add(focus, Math.max(path.length - 1, 0), 0, 1, false);
    chart.style.height = ((depthMax + 1) * ROW) + "px";
    chart.setAttribute("data-rendered", "1");
  }
  draw(doc.root, [doc.root]);
}
"""

#: The chart's style (frames absolutely placed in a relatively placed chart); once per page.
STYLE = """
.fg-chart { position: relative; width: 100%; }
.fg-frame { position: absolute; height: 17px; box-sizing: border-box; border: 1px solid #fff;
  overflow: hidden; white-space: nowrap; text-overflow: ellipsis; padding: 0 3px; line-height: 15px;
  cursor: pointer; font: 12px sans-serif; }
.fg-frame:hover { border-color: #000; }
"""

_TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>__TITLE__</title>
<style>
body { font: 12px sans-serif; margin: 8px; }
h1 { font-size: 15px; margin: 0 0 4px 0; }
#info { color: #444; margin-bottom: 6px; min-height: 1.3em; }
__STYLE__
</style></head>
<body>
<h1>__TITLE__</h1>
<div id="info">__SUBTITLE__</div>
<div id="chart" class="fg-chart"></div>
<script id="fg-data" type="application/json">__DATA__</script>
<script>
__SCRIPT__
fgDraw(document.getElementById("chart"), document.getElementById("info"),
       JSON.parse(document.getElementById("fg-data").textContent));
</script>
</body></html>
"""


def _data(tree: dict[str, Any], unit: str, scale: float) -> str:
    data = json.dumps({"root": tree, "unit": unit, "scale": scale}, separators=(",", ":"))
    # Inside <script>, "</" could close the element early; \u003c keeps the JSON intact.
    return data.replace("<", "\\u003c")


def render_fragment(tree: dict[str, Any], element_id: str, unit: str = "s", scale: float = 1e-9,
                    caption: str = "") -> str:
    """One flame graph as a piece of a page: its caption line, chart and data, drawn by a page script
    that calls ``fgDraw`` for each ``.fg-embed`` (:data:`SCRIPT` and :data:`STYLE` once per page)."""
    ident = html.escape(element_id)
    return (f'<div class="fg-embed" id="{ident}"><div class="fg-info">{html.escape(caption)}</div>'
            f'<div class="fg-chart"></div>'
            f'<script type="application/json" class="fg-doc">{_data(tree, unit, scale)}</script></div>')


#: Draws every fragment of a page (after SCRIPT).
EMBED_SCRIPT = """
document.querySelectorAll(".fg-embed").forEach(function (embed) {
  fgDraw(embed.querySelector(".fg-chart"), embed.querySelector(".fg-info"),
         JSON.parse(embed.querySelector(".fg-doc").textContent));
});
"""


def render(profile: Profile, title: str = "otel-perf flame graph", sample_index: int | None = None) -> str:
    """The flame graph of ``profile`` as one HTML page (no external resources)."""
    index = profile.sample_index() if sample_index is None else sample_index
    value_type = profile.sample_types[index] if profile.sample_types else None
    unit, scale = _UNITS.get(value_type.unit if value_type else "count", ("", 1.0))
    tree = build_tree(profile, index)
    data = _data(tree, unit, scale)
    what = f"{value_type.type} ({value_type.unit})" if value_type else "samples"
    seconds = profile.duration_nanos / 1e9
    subtitle = f"{what}, {len(profile.samples)} stacks" + (f", over {seconds:.1f} s" if seconds else "")
    subtitle += ". Click a frame to zoom, the grey bar to zoom out."
    return (_TEMPLATE.replace("__TITLE__", html.escape(title))
            .replace("__STYLE__", STYLE)
            .replace("__SUBTITLE__", html.escape(subtitle))
            .replace("__SCRIPT__", SCRIPT)
            .replace("__DATA__", data))
