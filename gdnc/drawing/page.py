"""The whole picture of ``inspect --draw``: title, before panel, after panel, op histogram."""

from __future__ import annotations

import textwrap
from pathlib import Path

from matplotlib import rc_context
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from gdnc.atomic import open_replacing
from gdnc.drawing import FORMATS
from gdnc.drawing.capture import LayerView
from gdnc.drawing.diagrams import after_terminals, before_diagram, fused_box
from gdnc.drawing.figure import MARGIN, GraphPanel, NodePanel, draw_histogram, text_width
from gdnc.drawing.symbols import LEGEND
from gdnc.passes.pipeline import ConversionReport

TITLE_H = 0.95  # inches for the page title
PANEL_TITLE_H = 0.35  # inches above each panel for its title
PANEL_GAP = 0.7  # inches between the after panel and the histogram, its title included
HIST_LABELS_W = 1.5  # inches left of the histogram for op names
HIST_AXIS_H = 0.45  # inches below the histogram for its axis
HIST_ROW_H = 0.24
HIST_W = 5.0  # inches, op names included
MESSAGE_PT = 9.0
NO_CHAIN = "no delta-net chain found"


class MessagePanel:
    """A panel of text: why there is nothing to draw."""

    def __init__(self, lines: list[str], gid: str) -> None:
        self.text = "\n".join(textwrap.fill(line, 100, subsequent_indent="    ") for line in lines)
        self.gid = gid
        rows = self.text.split("\n")
        self.width = max(text_width(r, MESSAGE_PT, False) for r in rows) + 0.3
        self.height = 0.3 + 1.3 * MESSAGE_PT / 72 * len(rows)

    def draw(self, ax: Axes) -> None:
        ax.text(0.1, self.height - 0.1, self.text, fontsize=MESSAGE_PT, va="top", ha="left",
                parse_math=False, gid=self.gid)


def _subtitle(layer: LayerView, report: ConversionReport) -> str:
    chains = layer.chains
    ops = sum(c.ops for c in chains)
    steps = sum(len(c.step_ops) for c in chains)
    seqs = f"{len(chains)} sequences, " if len(chains) > 1 else ""
    tokens = f"{steps} token step{'s' * (steps != 1)}"
    return (f"drawn: {layer.fused.name}, the first fused layer: {seqs}{tokens}, {ops} matched ops → 1 node."
            f" The graph's other {report.nodes_before - ops} nodes (slicing, norms, head repeats, "
            f"other layers ...) fold into the node's inputs and attributes or stay.")


def _footer(layer: LayerView) -> str:
    first = layer.chains[0]
    legend = ", ".join(f"{s} {what}" for s, what in LEGEND)
    return (f"Token 0 of sequence 0: {first.step_ops[0]} ops (dashed: layout ops). Symbols: {legend}. "
            f"Constant inputs (axes, shapes) are not drawn.")


def inspection_figure(model_name: str, report: ConversionReport, layer: LayerView | None) -> Figure:
    """The page for ``report`` (histogram numbers are its ``ops_before`` / ``ops_after``); with
    no ``layer``, a panel saying so and the near-misses instead of the two diagrams."""
    left: GraphPanel | MessagePanel
    right: NodePanel | None = None
    if layer is not None:
        info = next((c for c in report.chains if c.node == layer.fused.name), None)
        left = GraphPanel(before_diagram(layer.chains), _footer(layer))
        right = NodePanel(fused_box(layer.fused, info), *after_terminals(layer.fused))
        left_title = "before: the unfused chain of one layer, token 0 op by op"
        subtitle = _subtitle(layer, report)
    else:
        left = MessagePanel([f"{NO_CHAIN}: nothing is fused",
                             *(f"near-miss: {m.reason}" for m in report.unfused[:8])], "no-chain")
        left_title = "before"
        subtitle = f"{NO_CHAIN} ({len(report.unfused)} near-misses)"
    ops = set(report.ops_before) | set(report.ops_after)
    hist_h = HIST_ROW_H * len(ops) + 0.6
    col_w = max(HIST_W, 0.0 if right is None else right.width)
    right_h = (0.0 if right is None else right.height + PANEL_GAP) + PANEL_TITLE_H + hist_h + HIST_AXIS_H
    page = (MARGIN * 4 + left.width + col_w, TITLE_H + max(left.height + PANEL_TITLE_H, right_h) + MARGIN)
    fig = Figure(figsize=page)
    fig.text(MARGIN / page[0], 1 - 0.3 / page[1], (f"{model_name}: {report.nodes_before} nodes → "
             f"{report.nodes_after}, {len(report.chains)} chain(s) fused"),
             fontsize=14, fontweight="bold", va="top", parse_math=False)
    fig.text(MARGIN / page[0], 1 - 0.68 / page[1], textwrap.fill(subtitle, int(page[0] * 14)), fontsize=9,
             va="top", color="#333333", parse_math=False)
    top = page[1] - TITLE_H - PANEL_TITLE_H
    _place(fig, page, left, (MARGIN, top - left.height), left_title)
    right_x = MARGIN * 3 + left.width
    if right is not None:
        _place(fig, page, right, (right_x, top - right.height), "after: one fused node")
        top -= right.height + PANEL_GAP
    ax = fig.add_axes(((right_x + HIST_LABELS_W) / page[0], (top - hist_h) / page[1],
                       (col_w - HIST_LABELS_W) / page[0], hist_h / page[1]))
    draw_histogram(ax, report.ops_before, report.ops_after)
    fig.text(right_x / page[0], (top + 0.12) / page[1], "op histogram of the whole graph: before vs "
             "after", fontsize=10, fontweight="bold", va="bottom", parse_math=False)
    return fig


def _place(fig: Figure, page: tuple[float, float], panel: GraphPanel | NodePanel | MessagePanel,
           at: tuple[float, float], title: str) -> None:
    (pw, ph), (x, y) = page, at
    ax = fig.add_axes((x / pw, y / ph, panel.width / pw, panel.height / ph))
    ax.set_xlim(0, panel.width)
    ax.set_ylim(0, panel.height)
    ax.set_axis_off()
    ax.set_title(title, fontsize=10, loc="left", fontweight="bold")
    panel.draw(ax)


def save_figure(fig: Figure, path: Path) -> None:
    """Write ``fig`` to ``path`` atomically, in the format its suffix names (``FORMATS``)."""
    fmt = FORMATS[path.suffix.lower()]
    with rc_context({"svg.fonttype": "none", "svg.hashsalt": "gdnc"}), open_replacing(path, "wb") as fh:
        fig.savefig(fh, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
