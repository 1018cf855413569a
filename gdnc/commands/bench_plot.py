"""``--plot FILE``: one figure of a ``BenchResult`` (matplotlib, Agg), written atomically.

Panels: op-level decode (state GB/s vs batch, the copy bandwidth as a ceiling), op-level
prefill (tokens/s vs length), model decode (tokens/s vs batch), model prefill (tokens/s vs
length); one colour per competitor, one line style per op shape, log axes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure  # saved through Agg; no pyplot, no GUI backend
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, NullLocator

from gdnc.atomic import check_target, open_replacing
from gdnc.bench.results import BenchResult, Suite
from gdnc.errors import InputError

COLOURS = {"fused": "tab:blue", "unfused": "tab:red", "ort-la": "tab:green", "fla": "tab:orange"}
STYLES = ("-", "--", ":", "-.")
CEILING = (0, (4, 2))
PANELS = (  # suite key, y attribute of a Measure, y label, x label
    ("op_decode", "gbps", "state GB/s read + written", "batch (sequences, T = 1)"),
    ("op_prefill", "tok_s", "tokens/s", "prompt length (one sequence)"),
    ("model_decode", "tok_s", "tokens/s (all sequences)", "batch (sequences decoding together)"),
    ("model_prefill", "tok_s", "tokens/s", "prompt length (one sequence)"),
)
LOG_SPAN = 20  # a y axis is logarithmic where its largest figure is this many times its smallest
TITLES = {"op_decode": "GatedDeltaNet op: decode", "op_prefill": "GatedDeltaNet op: prefill",
          "model_decode": "model: decode", "model_prefill": "model: prefill"}


def check_plot_target(path: Path) -> Path:
    """``path`` if the plot can be written there (a format matplotlib writes, a writable
    folder); InputError or GdncError otherwise. Run before measuring."""
    fmt = path.suffix.lower().lstrip(".")
    supported = Figure().canvas.get_supported_filetypes()
    if fmt not in supported:
        raise InputError(f"--plot {path}: unknown image format {path.suffix or '(none)'!r}; use one of "
                         f"{', '.join('.' + f for f in sorted(supported))}")
    check_target(path)
    if not os.access(path.parent, os.W_OK):
        raise InputError(f"--plot {path}: folder {path.parent} is not writable")
    return path


def _compact(y: float) -> str:
    """A tick label: 0.25, 12, 3.4k, 1.2M."""
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(y) >= scale:
            return f"{y / scale:.3g}{unit}"
    return f"{y:.3g}"


def _panel(ax: Any, suites: list[Suite], attr: str, ylabel: str, xlabel: str, ceiling: float | None) -> None:
    for style, suite in zip(STYLES * 4, suites):
        for name in suite.competitors:
            points = [(r.x, getattr(r.results[name], attr)) for r in suite.rows if name in r.results]
            ax.plot(*zip(*points), style, marker="o", ms=4, color=COLOURS.get(name, "tab:gray"))
    xs = sorted({r.x for s in suites for r in s.rows})
    if ceiling is not None:
        ax.axhline(ceiling, color="black", lw=1, ls=CEILING)
        ax.annotate(f"copy bandwidth {ceiling:,.0f} GB/s", (xs[0], ceiling), xytext=(2, -10),
                    textcoords="offset points", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.xaxis.set_minor_locator(NullLocator())
    ys = [y for line in ax.get_lines() for y in line.get_ydata()]
    if ys and max(ys) > LOG_SPAN * min(ys):  # log only where the figures span decades
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, 1.1 * max(ys, default=1.0))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: _compact(y)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)


def _legend(fig: Any, result: BenchResult) -> None:
    """One legend below the panels: a colour per competitor, a line style per op shape."""
    names = dict.fromkeys(n for s in result.suites for n in s.competitors)
    handles = [Line2D([], [], color=COLOURS.get(n, "tab:gray"), marker="o", ms=4, label=n) for n in names]
    shapes = [s.shape for s in result.suite("op_decode") if s.shape is not None]
    handles += [Line2D([], [], color="dimgray", ls=style, label=f"op at HVxKxV {shape.label}")
                for style, shape in zip(STYLES * 4, shapes)]
    handles.append(Line2D([], [], color="black", lw=1, ls=CEILING, label="copy bandwidth (ceiling)"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9, frameon=False)


def write_plot(path: Path, result: BenchResult) -> None:
    fig = Figure(figsize=(12, 9), layout="constrained")
    axes = fig.subplots(2, 2).ravel()
    for ax, (key, attr, ylabel, xlabel) in zip(axes, PANELS):
        ceiling = result.copy_bandwidth_gbps if key == "op_decode" else None
        _panel(ax, result.suite(key), attr, ylabel, xlabel, ceiling)
        ax.set_title(TITLES[key], fontsize=11)
    _legend(fig, result)
    d = result.device
    fig.suptitle(f"gdnc bench: {Path(result.model).name} ({result.arch}) on {d['name']} "
                 f"({d['kind']}, {d['threads']} threads), fused vs unfused, median of {result.rounds} rounds")
    with open_replacing(path, "wb") as fh:
        fig.savefig(fh, format=path.suffix.lower().lstrip("."), dpi=110)
