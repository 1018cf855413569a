"""The GPU peer of ``gdnc bench --e2e``: HF transformers' Qwen3.5 (text) at a corpus preset's shape
(``corpus.sized_gguf.PRESETS``; random weights, the same dims as the GGUF file gdnc runs), its
delta-rule layers through fla's kernels where fla is importable (``fla-core``, carried as a
wheel), on one device.

Three figures in tokens per second, medians over ``--rounds`` after one untimed warm-up, each
timed call ending synchronized: prefill of one ``--prompt``-token prompt; ``--decode`` greedy
steps of one sequence with its cache (the argmax read back each step, as gdnc's bench does);
the same steps of ``--seqs`` sequences together. One JSON object goes to stdout (and
``--out``). Usage: ``python benchmarks/hf_peer_decode.py --preset 0.5b --device cuda --dtype
bfloat16 [--prompt 512] [--seqs 4]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from corpus.sized_gguf import PRESETS  # noqa: E402
from corpus.tiny_gguf import Shape  # noqa: E402


def hf_model(shape: Shape, device: str, dtype: torch.dtype) -> torch.nn.Module:
    """Qwen3.5's text model of ``shape``'s dims, random weights, in ``dtype`` on ``device``."""
    from transformers import Qwen3_5ForCausalLM, Qwen3_5TextConfig

    layer_types = ["full_attention" if (i + 1) % shape.interval == 0 else "linear_attention"
                   for i in range(shape.layers)]
    cfg = Qwen3_5TextConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.ffn,
        num_hidden_layers=shape.layers, num_attention_heads=shape.attn_heads,
        num_key_value_heads=shape.attn_kv_heads, head_dim=shape.attn_head_dim,
        linear_conv_kernel_dim=shape.conv, linear_key_head_dim=shape.ssm_head_dim,
        linear_value_head_dim=shape.ssm_head_dim, linear_num_key_heads=shape.k_heads,
        linear_num_value_heads=shape.v_heads, layer_types=layer_types, tie_word_embeddings=shape.tied,
        rms_norm_eps=shape.eps,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta,
                         "partial_rotary_factor": shape.rope_dim / shape.attn_head_dim})
    return Qwen3_5ForCausalLM(cfg).to(device=device, dtype=dtype).eval()


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _greedy(model: torch.nn.Module, seqs: int, steps: int, vocab: int, device: str) -> None:
    """``steps`` greedy steps of ``seqs`` sequences from a one-token prompt each."""
    tok = (torch.arange(seqs, device=device) % vocab + 1).unsqueeze(1)
    past = None
    for _ in range(steps):
        out = model(tok, past_key_values=past, use_cache=True)
        past = out.past_key_values
        tok = torch.tensor(out.logits[:, -1].argmax(-1).tolist(), device=device).unsqueeze(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=PRESETS, default="0.5b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--seqs", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from transformers.utils import import_utils

    shape, dev = PRESETS[args.preset], args.device
    torch.manual_seed(0)
    model = hf_model(shape, dev, getattr(torch, args.dtype))
    ids = torch.randint(0, shape.vocab, (1, args.prompt), device=dev)
    rates: dict[str, list[float]] = {"prefill": [], "decode": [], "batch": []}
    with torch.inference_mode():
        for r in range(args.rounds + 1):
            times = {"prefill": _timed(lambda: model(ids, use_cache=True), dev),
                     "decode": _timed(lambda: _greedy(model, 1, args.decode, shape.vocab, dev), dev),
                     "batch": _timed(lambda: _greedy(model, args.seqs, args.decode, shape.vocab, dev), dev)}
            if r:
                rates["prefill"].append(args.prompt / times["prefill"])
                rates["decode"].append(args.decode / times["decode"])
                rates["batch"].append(args.seqs * args.decode / times["batch"])
    import transformers

    result = {
        "peer": "transformers", "transformers": transformers.__version__, "torch": torch.__version__,
        "fla": bool(getattr(import_utils, "is_flash_linear_attention_available", lambda: False)()),
        "device": torch.cuda.get_device_name() if dev.startswith("cuda") else "cpu",
        "preset": args.preset, "dtype": args.dtype, "rounds": args.rounds, "prompt": args.prompt,
        "decode": args.decode, "seqs": args.seqs,
        "params": sum(p.numel() for p in model.parameters()),
        **{f"{k}_tok_s": statistics.median(v) for k, v in
           (("prefill", rates["prefill"]), ("decode", rates["decode"]), ("batch_decode", rates["batch"]))},
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
