"""Train a tiny Qwen3.5-architecture hybrid on Python's docs and write it as llama.cpp GGUF.

The model is ``transformers.Qwen3_5ForCausalLM`` (4 blocks: 3 Gated DeltaNet, 1 gated full
attention; GVA with twice as many value heads as key heads), trained from scratch with AdamW on
the text of ``pydoc_data.topics`` (a fixed 5% of the topics held out for evaluation). The
tokenizer is ``corpus.tiny_gguf.train_tokenizer()``. The trained weights are written as GGUF
for architecture ``qwen35`` in llama.cpp's layout (the mapping of ``convert_hf_to_gguf.py``,
see ``tests/fixtures/gguf/README.md``), as F16 and Q8_0:
``<out>/tiny-qwen35-f16.gguf`` and ``<out>/tiny-qwen35-q8_0.gguf``. ``<out>/tiny-qwen35/``
gets the HF checkpoint (``config.json``, ``model.safetensors`` in float16), the held-out text
(``heldout.txt``) and a training log; ``<out>/tiny-qwen35-decode.onnx`` one decode step of that
checkpoint as ONNX (``corpus/decode_onnx.py``).

Finally the F16 file is loaded in gdnc (fused and unfused graphs) and its logits are compared
with the HF model's on held-out text. Usage:
``python examples/train_tiny.py [--minutes M | --steps N] [--out DIR] [--seed S]``
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import pydoc_data.topics
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: corpus/
from corpus.decode_onnx import export_decode_step, load_checkpoint  # noqa: E402
from corpus.tiny_gguf import SPECIAL, metadata, train_tokenizer, write_gguf  # noqa: E402
from gdnc.frontends.gguf_tokenizer import SPLIT_PATTERNS  # noqa: E402

ARCH = "qwen35"
NAME = "Qwen35 Tiny Pydoc"
# model shape: hidden, blocks, GDN key heads / value heads / head dim, attention heads / kv heads /
# head dim, FFN width, RoPE dims (partial factor 0.25 of the attention head dim)
E, N_LAYER, INTERVAL, CTX = 192, 4, 4, 4096
H, HV, K, CONV = 3, 6, 32, 4
N_HEAD, N_HEAD_KV, HEAD_DIM, ROPE_DIM = 6, 2, 32, 8
N_FF = 512
SEQ, BATCH, PEAK_LR, WARMUP, WD = 128, 16, 3e-3, 100, 0.05
HOLDOUT = 0.05
OVERLAP_CHARS = 40
DIMS = {"E": E, "N_LAYER": N_LAYER, "INTERVAL": INTERVAL, "CTX": CTX, "H": H, "HV": HV, "K": K,
        "CONV": CONV, "N_HEAD": N_HEAD, "N_HEAD_KV": N_HEAD_KV, "HEAD_DIM": HEAD_DIM,
        "ROPE_DIM": ROPE_DIM, "N_FF": N_FF}
PROMPT = "The for statement"


def hf_config(n_vocab: int, eos: int, pad: int):
    from transformers import Qwen3_5TextConfig

    return Qwen3_5TextConfig(
        vocab_size=n_vocab, hidden_size=E, intermediate_size=N_FF, num_hidden_layers=N_LAYER,
        num_attention_heads=N_HEAD, num_key_value_heads=N_HEAD_KV, head_dim=HEAD_DIM,
        linear_conv_kernel_dim=CONV, linear_key_head_dim=K, linear_value_head_dim=K,
        linear_num_key_heads=H, linear_num_value_heads=HV, max_position_embeddings=CTX,
        rms_norm_eps=1e-6, tie_word_embeddings=False,
        layer_types=["linear_attention" if (i + 1) % INTERVAL else "full_attention"
                     for i in range(N_LAYER)],
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                         "partial_rotary_factor": ROPE_DIM / HEAD_DIM,
                         "mrope_section": [2, 1, 1], "mrope_interleaved": True},
        eos_token_id=eos, pad_token_id=pad, bos_token_id=None)


def hf_tokenizer(tok: tuple[list[str], list[int], list[str]]) -> Tokenizer:
    """The BPE of ``train_tokenizer()`` rebuilt from its tokens and merges (as the GGUF has it)."""
    tokens, types, merges = tok
    vocab = {t: i for i, t in enumerate(tokens) if types[i] == 1}
    bpe = models.BPE(vocab=vocab, merges=[tuple(m.split(" ", 1)) for m in merges])
    t = Tokenizer(bpe)
    t.normalizer = normalizers.NFC()
    t.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(SPLIT_PATTERNS["qwen35"]), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return t


def _standalone_topics(keys: list[str]) -> list[str]:
    """The topics none of whose ``OVERLAP_CHARS``-character chunks occurs in another topic
    (pydoc's topics quote each other at length: holding out such a topic would measure recall)."""
    texts = pydoc_data.topics.topics
    owner: dict[str, int] = {}  # every window of every topic -> its topic, -1 if in several
    for i, k in enumerate(keys):
        text = texts[k]
        for w in {text[j:j + OVERLAP_CHARS] for j in range(len(text) - OVERLAP_CHARS + 1)}:
            owner[w] = i if owner.get(w, i) == i else -1
    return [k for k in keys
            if all(owner[texts[k][j:j + OVERLAP_CHARS]] != -1
                   for j in range(0, len(texts[k]) - OVERLAP_CHARS + 1, OVERLAP_CHARS))]


def split_topics(seed: int) -> tuple[list[str], list[str]]:
    """(train keys, held-out keys): topics that share no text with any other, drawn in a seeded
    order until they hold ``HOLDOUT`` of all the text."""
    texts = pydoc_data.topics.topics
    keys = sorted(texts)
    budget = HOLDOUT * sum(len(texts[k]) for k in keys)
    candidates = _standalone_topics(keys)
    held: list[str] = []
    for i in np.random.default_rng(seed).permutation(len(candidates)):
        if sum(len(texts[k]) for k in held) >= budget:
            break
        held.append(candidates[i])
    return [k for k in keys if k not in held], sorted(held)


def encode_topics(t: Tokenizer, keys: list[str], eot: int) -> np.ndarray:
    """Token ids of the topics' texts, each followed by ``<|endoftext|>``."""
    ids: list[int] = []
    for k in keys:
        ids += t.encode(pydoc_data.topics.topics[k]).ids + [eot]
    return np.asarray(ids, dtype=np.int64)


@torch.no_grad()
def perplexity(logits_fn, ids: np.ndarray, seq: int = SEQ) -> float:
    """exp(mean next-token NLL) over consecutive non-overlapping windows of ``seq + 1`` tokens."""
    nll, n = 0.0, 0
    for s in range(0, len(ids) - 1, seq):
        w = ids[s:s + seq + 1]
        if len(w) < 2:
            break
        lg = logits_fn(w[:-1]).float()
        nll += F.cross_entropy(lg, torch.as_tensor(w[1:]), reduction="sum").item()
        n += len(w) - 1
    return math.exp(nll / n)


def hf_logits(model):
    def fn(ids: np.ndarray) -> torch.Tensor:
        return model(torch.as_tensor(ids)[None], use_cache=False).logits[0]
    return fn


def train(model, data: np.ndarray, minutes: float, seed: int, steps: int | None = None,
          log_every: int = 25) -> list[dict]:
    """AdamW, linear warm-up then cosine decay to 10% over ``steps`` optimizer steps (the same
    model on every run with the same seed and threads) or, without ``steps``, over the time
    budget (wall clock)."""
    g = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": WD},
                             {"params": other, "weight_decay": 0.0}],
                            lr=PEAK_LR, betas=(0.9, 0.95))
    data_t = torch.as_tensor(data)
    budget, t0, step, log, run = minutes * 60.0, time.monotonic(), 0, [], []
    model.train()
    while True:
        frac = step / steps if steps else (time.monotonic() - t0) / budget
        if frac >= 1.0:
            break
        lr = PEAK_LR * min(1.0, (step + 1) / WARMUP) * (0.1 + 0.45 * (1 + math.cos(math.pi * frac)))
        for group in opt.param_groups:
            group["lr"] = lr
        starts = torch.randint(0, len(data) - SEQ - 1, (BATCH,), generator=g)
        batch = torch.stack([data_t[s:s + SEQ + 1] for s in starts.tolist()])
        logits = model(batch[:, :-1], use_cache=False).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        run.append(loss.item())
        step += 1
        if step % log_every == 0:
            entry = {"step": step, "minutes": round((time.monotonic() - t0) / 60, 2),
                     "lr": lr, "loss": sum(run) / len(run)}
            log.append(entry)
            run = []
            print(f"step {step:5d}  {entry['minutes']:6.2f} min  lr {lr:.2e}  "
                  f"loss {entry['loss']:.3f}", flush=True)
    if run:
        log.append({"step": step, "minutes": round((time.monotonic() - t0) / 60, 2), "lr": lr,
                    "loss": sum(run) / len(run)})
    model.eval()
    return log


def _tiled(t: torch.Tensor) -> torch.Tensor:
    """Reorder value heads (dim 0) from HF's grouped order to llama.cpp's tiled order for qwen35.

    HF value head ``g * r + s`` (r = HV / H) belongs to key head ``g``; in the tiled order the
    same head sits at ``s * H + g``, so that value head j uses key head ``j % H``.
    """
    r = HV // H
    return t.reshape(H, r, -1, *t.shape[1:]).transpose(0, 1).reshape(t.shape)


def gguf_tensors(model) -> dict[str, np.ndarray]:
    """HF state -> llama.cpp tensors (numpy shapes, fixtures' order), as ``convert_hf_to_gguf``."""
    sd = {k: v.detach().float().clone() for k, v in model.state_dict().items()}
    nk = H * K

    def norm(name: str) -> torch.Tensor:  # zero-centred HF RMSNorm -> plain x*w
        return sd[name] + 1.0

    out = {"output.weight": sd["lm_head.weight"], "token_embd.weight": sd["model.embed_tokens.weight"]}
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        blk = {"attn_norm": norm(p + "input_layernorm.weight")}
        mlp = {"ffn_down": sd[p + "mlp.down_proj.weight"], "ffn_gate": sd[p + "mlp.gate_proj.weight"],
               "ffn_up": sd[p + "mlp.up_proj.weight"]}
        if (i + 1) % INTERVAL:
            la = p + "linear_attn."
            qkv = sd[la + "in_proj_qkv.weight"]
            conv = sd[la + "conv1d.weight"].squeeze(1)  # (channels, kernel)
            blk |= {
                "ssm_a": _tiled(-torch.exp(sd[la + "A_log"])),
                "ssm_conv1d": torch.cat([conv[:2 * nk], _tiled(conv[2 * nk:])]),
                "ssm_dt.bias": _tiled(sd[la + "dt_bias"]),
                "ssm_alpha": _tiled(sd[la + "in_proj_a.weight"]),
                "ssm_beta": _tiled(sd[la + "in_proj_b.weight"]),
                "attn_qkv": torch.cat([qkv[:2 * nk], _tiled(qkv[2 * nk:])]),
                "attn_gate": _tiled(sd[la + "in_proj_z.weight"]),
                "ssm_norm": sd[la + "norm.weight"],  # gated norm: stored as is
                "ssm_out": _tiled(sd[la + "out_proj.weight"].T).T,
                **mlp, "post_attention_norm": norm(p + "post_attention_layernorm.weight")}
        else:
            sa = p + "self_attn."
            blk |= {**mlp, "post_attention_norm": norm(p + "post_attention_layernorm.weight"),
                    "attn_k_norm": norm(sa + "k_norm.weight"), "attn_k": sd[sa + "k_proj.weight"],
                    "attn_output": sd[sa + "o_proj.weight"], "attn_q_norm": norm(sa + "q_norm.weight"),
                    "attn_q": sd[sa + "q_proj.weight"], "attn_v": sd[sa + "v_proj.weight"]}
        for name, value in blk.items():
            suffix = "" if name in ("ssm_a", "ssm_dt.bias") else ".weight"
            out[f"blk.{i}.{name}{suffix}"] = value
    out["output_norm.weight"] = norm("model.norm.weight")
    return {n: np.ascontiguousarray(v.numpy(), dtype=np.float32) for n, v in out.items()}


def write_ggufs(model, tok, out: Path) -> list[Path]:
    tensors = gguf_tensors(model)
    paths = []
    for variant in ("f16", "q8_0"):
        kv = metadata(ARCH, variant, tensors, tok, dims=DIMS, name=NAME)
        paths.append(write_gguf(out / f"tiny-qwen35-{variant}.gguf", ARCH, variant, kv, tensors))
    return paths


def verify(model, tok: tuple, held: np.ndarray, hf_tok: Tokenizer, out: Path) -> dict:
    """gdnc (fused / unfused) vs HF fp32 logits and held-out perplexity: on an F32 GGUF of the
    same weights (a temporary file: the layout mapping alone) and on the written F16 / Q8_0
    files (mapping plus weight rounding)."""
    import tempfile

    from gdnc.frontends.gguf_tokenizer import GgufTokenizer
    from gdnc.models.qwen_hybrid.model import HybridModel

    sample = pydoc_data.topics.topics["for"][:400]
    snippet = held[:SEQ]
    ref = hf_logits(model)(snippet)
    res: dict = {"ppl_heldout_hf_fp32": perplexity(hf_logits(model), held)}
    with tempfile.TemporaryDirectory() as tmp:
        tensors = gguf_tensors(model)
        f32 = write_gguf(Path(tmp) / "tiny-qwen35-f32.gguf", ARCH, "f32",
                         metadata(ARCH, "f32", tensors, tok, dims=DIMS, name=NAME), tensors)
        for variant, path in (("f32", f32), ("f16", out / "tiny-qwen35-f16.gguf"),
                              ("q8_0", out / "tiny-qwen35-q8_0.gguf")):
            for fused in (True, False):
                label = f"{variant}_{'fused' if fused else 'unfused'}"
                hm = HybridModel(str(path), fused=fused)
                if variant == "f32" and fused:
                    gt = GgufTokenizer.from_metadata(hm.file.metadata)
                    res["tokenizer_match"] = gt.encode(sample) == hf_tok.encode(sample).ids
                lg = hm.logits(snippet).float()
                res[f"max_dlogit_{label}_vs_hf"] = (lg - ref).abs().max().item()
                res[f"top1_{label}_vs_hf"] = (lg.argmax(-1) == ref.argmax(-1)).float().mean().item()
                res[f"ppl_heldout_{label}"] = perplexity(hm.logits, held)
    return res


def save_checkpoint(model, folder: Path) -> None:
    """The HF checkpoint (``config.json``, ``model.safetensors``), weights stored as float16 (the
    F16 GGUF's values; half the bytes of float32)."""
    copy.deepcopy(model).half().save_pretrained(str(folder))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="training budget (wall clock)")
    p.add_argument("--steps", type=int, default=None,
                   help="train this many steps instead (reproducible; overrides --minutes)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent, help="output folder")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-verify", action="store_true", help="skip the gdnc comparison")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    from transformers import Qwen3_5ForCausalLM

    tok = train_tokenizer()
    hf_tok = hf_tokenizer(tok)
    eot, eos = tok[0].index(SPECIAL[0]), tok[0].index("<|im_end|>")
    train_keys, held_keys = split_topics(args.seed)
    train_ids, held_ids = encode_topics(hf_tok, train_keys, eot), encode_topics(hf_tok, held_keys, eot)
    print(f"topics: {len(train_keys)} train ({len(train_ids)} tokens), {len(held_keys)} held out "
          f"{held_keys} ({len(held_ids)} tokens)", flush=True)
    cfg = hf_config(len(tok[0]), eos, eot)
    cfg._attn_implementation = "eager"
    model = Qwen3_5ForCausalLM(cfg).float()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"parameters: {n_params}", flush=True)
    log = train(model, train_ids, args.minutes, args.seed, args.steps)
    ppl = perplexity(hf_logits(model), held_ids)
    print(f"held-out perplexity (HF fp32): {ppl:.3f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    paths = write_ggufs(model, tok, args.out)
    for path in paths:
        print(f"{path} {path.stat().st_size} bytes", flush=True)
    side = args.out / "tiny-qwen35"
    save_checkpoint(model, side)
    (side / "heldout.txt").write_text("\n\n".join(pydoc_data.topics.topics[k] for k in held_keys) + "\n")
    decode = export_decode_step(load_checkpoint(side), args.out / "tiny-qwen35-decode.onnx")
    print(f"{decode} {decode.stat().st_size} bytes", flush=True)
    info = {"parameters": n_params, "minutes": log[-1]["minutes"] if log else 0.0, "seed": args.seed,
            "steps": log[-1]["step"] if log else 0, "batch": BATCH, "seq": SEQ,
            "held_out_topics": held_keys, "train_tokens": len(train_ids),
            "held_out_tokens": len(held_ids), "ppl_heldout_hf_fp32": ppl, "log": log}
    if not args.no_verify:
        info["verify"] = verify(model, tok, held_ids, hf_tok, args.out)
        for k, v in info["verify"].items():
            print(f"{k}: {v}", flush=True)
    (side / "train_log.json").write_text(json.dumps(info, indent=1) + "\n")


if __name__ == "__main__":
    main()
