"""An offline head view of attention maps: one self-contained HTML file (inline script and style, nothing
fetched), as bertviz's head view draws them: the tokens in two columns, a line from each query on the left
to each key on the right whose opacity is the weight, a layer and a head selector, and hovering a token
keeps only its lines.

The weights travel in the page as JSON (``{"tokens", "token_ids", "weights": [L][H][T][T]}``), each number
the shortest decimal that reads back as the same float32, so the page holds exactly the .npz's weights.
"""

from __future__ import annotations

import json

import numpy as np

from bertgpt_jax.inference.attention import AttentionMaps

DATA_ID = "attention-data"


def _numbers(w: np.ndarray) -> str:
    """A float32 array as nested JSON lists, each value its shortest round-trip decimal."""
    if w.ndim == 1:
        return "[" + ",".join(str(v) for v in w) + "]"  # numpy float32 str: shortest repr that round-trips
    return "[" + ",".join(_numbers(x) for x in w) + "]"


def page_data(maps: AttentionMaps) -> str:
    """The JSON the page embeds, safe inside ``<script>`` (no ``<`` outside a string escape)."""
    w = np.asarray(maps.weights, np.float32)
    if w.ndim != 4 or w.shape[2] != w.shape[3] or w.shape[2] != len(maps.tokens):
        raise ValueError(f"attention weights of shape {w.shape} do not match {len(maps.tokens)} tokens; "
                         "expected [layers, heads, tokens, tokens]")
    if not np.all(np.isfinite(w)):
        raise ValueError("attention weights hold NaN or infinity; a head view needs finite weights")
    head = json.dumps({"tokens": list(maps.tokens), "token_ids": [int(i) for i in maps.token_ids]})
    return (head[:-1] + ',"weights":' + _numbers(w) + "}").replace("<", "\\u003c")


def read_page_data(html: str) -> dict:
    """The embedded JSON of a page :func:`write_head_view` wrote (for tests and notebooks)."""
    start_tag = f'<script type="application/json" id="{DATA_ID}">'
    start = html.index(start_tag) + len(start_tag)
    return json.loads(html[start:html.index("</script>", start)])


def html_page(maps: AttentionMaps, title: str = "Attention head view") -> str:
    L, H = maps.weights.shape[:2]
    import html as html_lib

    return _TEMPLATE.replace("@TITLE@", html_lib.escape(title)).replace("@DATA_ID@", DATA_ID).replace(
        "@SHAPE@", f"{L} layers x {H} heads, {len(maps.tokens)} tokens").replace("@DATA@", page_data(maps))


def write_head_view(maps: AttentionMaps, path: str, title: str = "Attention head view") -> None:
    from bertgpt_jax import atomic_files

    with atomic_files.atomic_open(path, "w", encoding="utf-8") as f:
        f.write(html_page(maps, title))


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>@TITLE@</title>
<style>
  body { font-family: sans-serif; margin: 1.5em; color: #222; }
  .controls { margin-bottom: 1em; }
  .controls label { margin-right: 1.5em; }
  .shape { color: #777; font-size: 0.9em; }
  svg text { font-family: monospace; font-size: 13px; cursor: default; }
  svg text.dim { fill: #bbb; }
  svg rect.token { fill: transparent; }
  svg rect.token:hover { fill: #eee; }
</style>
</head>
<body>
<h3>@TITLE@</h3>
<div class="controls">
  <label>Layer <select id="layer"></select></label>
  <label>Head <select id="head"></select></label>
  <span class="shape">@SHAPE@ &middot; queries left, keys right; hover a token to see only its lines</span>
</div>
<svg id="view"></svg>
<script type="application/json" id="@DATA_ID@">@DATA@</script>
<script>
(function () {
  "use strict";
  var data = JSON.parse(document.getElementById("@DATA_ID@").textContent);
  var tokens = data.tokens, weights = data.weights;
  var L = weights.length, H = weights[0].length, T = tokens.length;
  var NS = "http://www.w3.org/2000/svg", ROW = 20, TOP = 10;
  var layerSel = document.getElementById("layer"), headSel = document.getElementById("head");
  var svg = document.getElementById("view");

  function fill(select, n, name) {
    for (var i = 0; i < n; i++) {
      var o = document.createElement("option");
      o.value = String(i);
      o.textContent = name + " " + i;
      select.appendChild(o);
    }
  }
  fill(layerSel, L, "layer");
  fill(headSel, H, "head");

  var width = 0;
  tokens.forEach(function (t) { width = Math.max(width, t.length); });
  var textW = Math.max(60, 8 * width + 16), gap = 300;
  var leftX = textW, rightX = textW + gap;
  svg.setAttribute("width", String(2 * textW + gap));
  svg.setAttribute("height", String(TOP * 2 + ROW * T));

  function el(name, attrs, text) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) { e.setAttribute(k, String(attrs[k])); }
    if (text !== undefined) { e.textContent = text; }
    svg.appendChild(e);
    return e;
  }
  function y(i) { return TOP + ROW * i + ROW / 2; }

  var lineGroup = document.createElementNS(NS, "g");
  svg.appendChild(lineGroup);
  var lines = [];  // lines[i][j]: query i to key j
  for (var i = 0; i < T; i++) {
    lines.push([]);
    for (var j = 0; j < T; j++) {
      var ln = document.createElementNS(NS, "line");
      ln.setAttribute("x1", String(leftX + 4));
      ln.setAttribute("y1", String(y(i)));
      ln.setAttribute("x2", String(rightX - 4));
      ln.setAttribute("y2", String(y(j)));
      ln.setAttribute("stroke-width", "2");
      lineGroup.appendChild(ln);
      lines[i].push(ln);
    }
  }
  var labels = { left: [], right: [] };
  tokens.forEach(function (t, i) {
    labels.left.push(el("text", { x: leftX - 6, y: y(i) + 4, "text-anchor": "end" }, t));
    labels.right.push(el("text", { x: rightX + 6, y: y(i) + 4, "text-anchor": "start" }, t));
    var a = el("rect", { "class": "token", x: 0, y: y(i) - ROW / 2, width: leftX, height: ROW });
    var b = el("rect", { "class": "token", x: rightX, y: y(i) - ROW / 2, width: textW, height: ROW });
    a.addEventListener("mouseenter", function () { focus = { side: "left", index: i }; draw(); });
    b.addEventListener("mouseenter", function () { focus = { side: "right", index: i }; draw(); });
    a.addEventListener("mouseleave", function () { focus = null; draw(); });
    b.addEventListener("mouseleave", function () { focus = null; draw(); });
  });

  var focus = null;
  function draw() {
    var l = Number(layerSel.value), h = Number(headSel.value);
    var w = weights[l][h], colour = "hsl(" + Math.round(360 * h / H) + ", 70%, 40%)";
    for (var i = 0; i < T; i++) {
      for (var j = 0; j < T; j++) {
        var shown = !focus || (focus.side === "left" ? focus.index === i : focus.index === j);
        lines[i][j].setAttribute("stroke", colour);
        lines[i][j].setAttribute("stroke-opacity", String(shown ? w[i][j] : 0));
      }
    }
    for (var k = 0; k < T; k++) {
      var dimLeft = focus && focus.side === "left" && focus.index !== k;
      var dimRight = focus && focus.side === "right" && focus.index !== k;
      labels.left[k].setAttribute("class", dimLeft ? "dim" : "");
      labels.right[k].setAttribute("class", dimRight ? "dim" : "");
    }
  }
  layerSel.addEventListener("change", draw);
  headSel.addEventListener("change", draw);
  draw();
})();
</script>
</body>
</html>
"""
