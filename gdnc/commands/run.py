"""``gdnc run MODEL``: a GGUF hybrid generates text for its prompts (``generate``); an ONNX model
runs once on ``--inputs X.npz`` (a line per output, or ``--json``; ``-o``: the outputs as .npz)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from gdnc import progress
from gdnc.commands import command_files
from gdnc.commands.llama_flags import device_for
from gdnc.commands.options import fused_flag
from gdnc.errors import InputError
from gdnc.frontends.model_kind import GGUF, model_kind


def run(model: Path, *, prompt: list[str], prompt_file: list[Path], n_new: int, parallel: int | None,
        ctx: int | None, prefill_chunk: int | None, fused_gdn: str, interpret: bool, ignore_eos: bool,
        temperature: float,
        seed: int, top_k: int, top_p: float, repeat_penalty: float, repeat_last_n: int,
        inputs: Path | None, output: Path | None, device: str | None, gpu_layers: str | None,
        threads: int | None, as_json: bool, quiet: bool, out: Console, err: Console) -> None:
    """The command, its options as typed; MODEL's kind (``model_kind``) picks the branch."""
    if threads is not None and not 1 <= threads <= 1024:
        raise InputError(f"--threads: {threads} is not in 1..1024")
    kind = model_kind(model)
    resolved = device_for(device, gpu_layers)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    if kind == GGUF:
        if inputs is not None or output is not None:
            raise InputError("--inputs / -o apply to ONNX models; a GGUF model takes -p PROMPT")
        from gdnc.commands.generate import GenerateOptions, generate_text, read_prompts
        from gdnc.runtime.sampling import Sampling

        sampling = Sampling(temperature=temperature, seed=seed, top_k=top_k, top_p=top_p,
                            repeat_penalty=repeat_penalty, repeat_last_n=repeat_last_n)
        opts = GenerateOptions(prompts=read_prompts(prompt, prompt_file), n_new=n_new,
                               parallel=parallel, sampling=sampling,
                               fused=fused_gdn if fused_flag(fused_gdn) else "off", ctx=ctx,
                               prefill_chunk=prefill_chunk, device=resolved, ignore_eos=ignore_eos,
                               compiled=not interpret)
        generate_text(model, opts, out, err, as_json=as_json, quiet=quiet)
        return
    if inputs is None:
        raise InputError("an ONNX model needs --inputs X.npz (a GGUF model takes -p PROMPT)")
    _run_onnx(model, inputs, output, resolved, not interpret, as_json, quiet, out, err)


def _run_onnx(model: Path, inputs: Path, output: Path | None, device: str, compiled: bool,
              as_json: bool, quiet: bool, out: Console, err: Console) -> None:
    import numpy as np

    from gdnc.commands.npz_io import load_npz, save_npz
    from gdnc.frontends.onnx_model import load_onnx
    from gdnc.opset.onnx_ops.dtypes import array_from_tensor
    from gdnc.runtime.executor import Executor

    command_files.check(models=[model], inputs=[inputs], outputs=[output])
    feeds = load_npz(inputs)
    with progress.bars(err, enabled=not (as_json or quiet)):
        executor = Executor(load_onnx(model), device, compiled=compiled)
        results = {k: array_from_tensor(v) for k, v in executor.run(feeds).items()}
        if output is not None:
            save_npz(output, results)
    summary = {k: {"shape": list(v.shape), "dtype": str(v.dtype),
                   "mean": float(np.mean(v)) if v.size else 0.0} for k, v in results.items()}
    if as_json:
        out.print_json(json.dumps(summary))
    elif not quiet:
        for name, info in summary.items():
            out.print(f"{name}: shape {info['shape']} {info['dtype']} mean {info['mean']:.6g}")
