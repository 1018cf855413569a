"""The picture, drawn with matplotlib: boxes and edges in inches, the op histogram, the page.

Page: the title on top; left, the layer before fusion; right, the fused node above the op
histogram of the whole graph. SVG text stays text (``svg.fonttype`` "none"), and the texts
tests look for carry ids: a box's title its ``Box.gid``, its line i below the title
``GID-i`` (``step-op-N``: op N of the expanded step; ``in-S`` ... : its input terminals by role;
``out-o``, ``out-S``, ``more-steps``, ``other-sequences``, ``fused-node``), ``no-chain``, and
``hist-before-OP`` / ``hist-after-OP`` (a bar's count).
"""

from __future__ import annotations

import textwrap
from collections.abc import Hashable

import networkx as nx
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import RendererAgg
from matplotlib.font_manager import FontProperties
from matplotlib.patches import FancyArrowPatch, FancyBboxPatch
from matplotlib.path import Path as MplPath

from gdnc.drawing.diagrams import Box
from gdnc.drawing.layout import Point, layered_layout

TITLE_PT, LINE_PT, NOTE_PT = 8.5, 8.0, 6.5
PAD = 0.07  # inches inside a box
MARGIN = 0.35  # inches around panels
GAP = 0.55  # inches between after-panel columns
STYLES: dict[str, dict] = {
    "op": {"facecolor": "#f2f2f2", "edgecolor": "#555555", "linestyle": "-"},
    "layout": {"facecolor": "#ffffff", "edgecolor": "#999999", "linestyle": "--"},
    "input": {"facecolor": "#dbe9f7", "edgecolor": "#3b6ea5", "linestyle": "-"},
    "output": {"facecolor": "#dcf0dc", "edgecolor": "#3d8b3d", "linestyle": "-"},
    "collapsed": {"facecolor": "#fdf1cf", "edgecolor": "#b8860b", "linestyle": "-"},
    "fused": {"facecolor": "#f7e1f0", "edgecolor": "#8e2c74", "linestyle": "-"},
}
EDGE_COLOR = "#555555"
BEFORE_COLOR, AFTER_COLOR = "#9aa5b1", "#8e2c74"
_RENDERER = RendererAgg(1, 1, 72)  # measures text in points


def _lines(box: Box) -> list[tuple[str, float, bool, str]]:
    """(text, size, bold, gid) of each line of ``box``, top to bottom: the title has the box's
    gid, line i after it ``gid-i``."""
    rows = [(box.title, TITLE_PT, True), *((line, LINE_PT, False) for line in box.lines)]
    if box.note:
        rows.append((box.note, NOTE_PT, False))
    return [(t, s, b, box.gid and (f"{box.gid}-{i}" if i else box.gid)) for i, (t, s, b) in enumerate(rows)]


def text_width(text: str, size: float, bold: bool) -> float:
    prop = FontProperties(size=size, weight="bold" if bold else "normal")
    return _RENDERER.get_text_width_height_descent(text, prop, ismath=False)[0] / 72


def box_size(box: Box) -> tuple[float, float]:
    rows = _lines(box)
    width = max(text_width(t, s, b) for t, s, b, _ in rows) + 2 * PAD
    return width, sum(1.3 * s / 72 for _, s, _, _ in rows) + 2 * PAD


def draw_box(ax: Axes, box: Box, center: Point, size: tuple[float, float]) -> None:
    (x, y), (w, h) = center, size
    ax.add_patch(FancyBboxPatch((x - w / 2, y - h / 2), w, h, boxstyle="round,pad=0,rounding_size=0.05",
                                linewidth=1.4 if box.kind == "fused" else 0.8, **STYLES[box.kind]))
    top = y + h / 2 - PAD
    for text, size_pt, bold, gid in _lines(box):
        line = 1.3 * size_pt / 72
        ax.text(x, top - line / 2, text, fontsize=size_pt, fontweight="bold" if bold else "normal",
                color="#666666" if size_pt == NOTE_PT else "black", ha="center", va="center",
                gid=gid or None, parse_math=False)
        top -= line


def _controls(points: list[Point], vertical: bool) -> list[Point]:
    """Bezier control points of a Catmull-Rom spline through ``points``, leaving the first and
    entering the last along the flow (down, or right)."""
    (x0, y0), (x1, y1), (xm, ym), (xn, yn) = points[0], points[1], points[-2], points[-1]
    lead = (x0, 2 * y0 - y1) if vertical else (2 * x0 - x1, y0)
    tail = (xn, 2 * yn - ym) if vertical else (2 * xn - xm, yn)
    ext = [lead, *points, tail]
    out: list[Point] = []
    for i in range(1, len(ext) - 2):
        (ax_, ay), (bx, by), (cx, cy), (dx, dy) = ext[i - 1:i + 3]
        out += [(bx + (cx - ax_) / 6, by + (cy - ay) / 6), (cx - (dx - bx) / 6, cy - (dy - by) / 6), (cx, cy)]
    return out


def draw_edge(ax: Axes, points: list[Point], vertical: bool = True) -> None:
    """A smooth arrow through ``points``."""
    verts = [points[0], *_controls(points, vertical)]
    codes = [MplPath.MOVETO] + [MplPath.CURVE4] * (len(verts) - 1)
    ax.add_patch(FancyArrowPatch(path=MplPath(verts, codes), arrowstyle="-|>,head_length=4,head_width=2",
                                 color=EDGE_COLOR, linewidth=0.8, shrinkA=0, shrinkB=0))


class GraphPanel:
    """A box diagram laid out top to bottom (``layered_layout``), with a text under it."""

    def __init__(self, dag: nx.DiGraph, footer: str) -> None:
        self.dag = dag
        self.sizes: dict[Hashable, tuple[float, float]] = {n: box_size(dag.nodes[n]["box"]) for n in dag}
        self.layout = layered_layout(dag, self.sizes)
        self.footer = textwrap.fill(footer, width=max(40, int(self.layout.width * 17)))
        self.width = max(self.layout.width, 4.0)
        self.height = self.layout.height + 0.2 + 0.16 * (self.footer.count("\n") + 1)

    def draw(self, ax: Axes) -> None:
        lift = self.height - self.layout.height
        shift = (self.width - self.layout.width) / 2
        for points in self.layout.edges.values():
            draw_edge(ax, [(x + shift, y + lift) for x, y in points])
        for n, (x, y) in self.layout.centers.items():
            draw_box(ax, self.dag.nodes[n]["box"], (x + shift, y + lift), self.sizes[n])
        ax.text(0, 0, self.footer, fontsize=7.5, color="#444444", va="bottom", ha="left", parse_math=False)


def _column_sizes(boxes: list[Box]) -> tuple[float, list[tuple[float, float]]]:
    """The width of a column of ``boxes`` and their sizes, every box as wide as the column."""
    sizes = [box_size(b) for b in boxes]
    width = max((w for w, _ in sizes), default=0.0)
    return width, [(width, h) for _, h in sizes]


class NodePanel:
    """One node, its inputs stacked on the left and its outputs on the right."""

    def __init__(self, node: Box, inputs: list[Box], outputs: list[Box]) -> None:
        self.node, self.inputs, self.outputs = node, inputs, outputs
        self.node_size = box_size(node)
        self.in_w, self.in_sizes = _column_sizes(inputs)
        self.out_w, self.out_sizes = _column_sizes(outputs)
        self.width = self.in_w + self.node_size[0] + self.out_w + 2 * GAP
        self.height = max(self._column(self.in_sizes), self._column(self.out_sizes), self.node_size[1])

    @staticmethod
    def _column(sizes: list[tuple[float, float]]) -> float:
        return sum(h for _, h in sizes) + 0.12 * max(len(sizes) - 1, 0)

    def _stack(self, ax: Axes, boxes: list[Box], sizes: list[tuple[float, float]], x: float,
               node_x: float) -> None:
        """Draw a column centred at ``x``, each box joined to the node's side at ``node_x``."""
        top = (self.height + self._column(sizes)) / 2
        nw, nh = self.node_size
        for i, (box, (w, h)) in enumerate(zip(boxes, sizes)):
            y = top - h / 2
            port = self.height / 2 + nh * 0.8 * ((len(boxes) - 1) / 2 - i) / max(len(boxes), 1)
            side = x + w / 2 if x < node_x else x - w / 2
            if x < node_x:
                draw_edge(ax, [(side, y), (node_x, port)], vertical=False)
            else:
                draw_edge(ax, [(node_x, port), (side, y)], vertical=False)
            draw_box(ax, box, (x, y), (w, h))
            top -= h + 0.12

    def draw(self, ax: Axes) -> None:
        nw = self.node_size[0]
        center = self.in_w + GAP + nw / 2
        self._stack(ax, self.inputs, self.in_sizes, self.in_w / 2, center - nw / 2)
        self._stack(ax, self.outputs, self.out_sizes, self.width - self.out_w / 2, center + nw / 2)
        draw_box(ax, self.node, (center, self.height / 2), self.node_size)


def draw_histogram(ax: Axes, before: dict[str, int], after: dict[str, int]) -> None:
    """Two bars per op (before, after), the counts written at their ends."""
    ops = sorted(set(before) | set(after), key=lambda o: (-before.get(o, 0), o))
    top = max([*before.values(), *after.values(), 1])
    bars = (("before", before, -0.2, BEFORE_COLOR), ("after", after, 0.2, AFTER_COLOR))
    for which, counts, dy, color in bars:
        ax.barh([i + dy for i in range(len(ops))], [counts.get(op, 0) for op in ops], height=0.38,
                color=color, label=which)
        for i, op in enumerate(ops):
            if counts.get(op):
                ax.text(counts[op] + top * 0.01, i + dy, str(counts[op]), va="center", fontsize=7,
                        gid=f"hist-{which}-{op}")
    ax.set_yticks(range(len(ops)), ops, fontsize=7.5)
    ax.set_ylim(len(ops) - 0.4, -0.6)
    ax.set_xlim(0, top * 1.15)
    ax.tick_params(axis="x", labelsize=7)
    ax.spines[["top", "right"]].set_visible(False)
    ax.legend(fontsize=7.5, loc="lower right", frameon=False)
