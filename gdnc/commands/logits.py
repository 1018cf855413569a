"""``gdnc logits MODEL --tokens IDS -o OUT.npy``: the logits of every position of IDS (one
forward pass of a GGUF hybrid from an empty state), float32 [T, n_vocab]."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from gdnc import progress
from gdnc.commands import command_files


def logits(model: Path, *, tokens: str, output: Path, fused_gdn: str, device: str, as_json: bool,
           quiet: bool, out: Console, err: Console) -> None:
    """The command, its options as typed (``tokens``: ids separated by spaces or commas)."""
    command_files.check(inputs=[model], outputs=[output])
    import numpy as np

    from gdnc.atomic import open_replacing
    from gdnc.commands.gguf_model import load_hybrid
    from gdnc.commands.options import fused_flag
    from gdnc.errors import InputError
    from gdnc.frontends.model_kind import require_gguf

    require_gguf(model, "logits")
    fused = fused_flag(fused_gdn)
    try:
        ids = [int(t) for t in tokens.replace(",", " ").split()]
    except ValueError as exc:
        raise InputError(f"--tokens: {tokens!r} is not a list of integers",
                         fix='give token ids, e.g. --tokens "1 2 3"') from exc
    with progress.bars(err, enabled=not (quiet or as_json)):
        runner = load_hybrid(model, fused=fused, device=device)
        result = runner.logits(ids).float().cpu().numpy()
        with open_replacing(output, "wb") as fh:
            np.save(fh, result)
    if as_json:
        out.print_json(json.dumps({"output": str(output), "shape": list(result.shape),
                                   "fused_gdn": fused_gdn, "argmax": result.argmax(-1).tolist()}))
    elif not quiet:
        out.print(f"wrote {output}: float32 {list(result.shape)} (fused GatedDeltaNet {fused_gdn})")
