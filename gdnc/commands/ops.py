"""``gdnc ops``: the ops the gdnc runtime executes, with the opset versions of each implementation."""

from __future__ import annotations

import json

from rich.console import Console
from rich.table import Table


def ops(*, as_json: bool, out: Console) -> None:
    """A table of op -> opset versions, or that mapping as JSON."""
    import gdnc.runtime.executor  # noqa: F401  (registers every op)
    from gdnc.opset.registry import supported_ops

    table_data = supported_ops()
    if as_json:
        out.print_json(json.dumps(table_data))
        return
    table = Table(title=f"gdnc runtime: {len(table_data)} ops")
    table.add_column("op")
    table.add_column("implementations from opset")
    for op, versions in table_data.items():
        table.add_row(op, ", ".join(map(str, versions)))
    out.print(table)
