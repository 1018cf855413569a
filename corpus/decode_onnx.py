"""Export ONE decode step of a ``transformers`` Qwen3.5 model as ONNX, states in and out.

The graph is HF's own forward (``Qwen3_5ForCausalLM``, eager attention) for one new token per
sequence, its cache rebuilt from plain tensors and read back (``DecodeStep``), traced by the
dynamo exporter (``torch.onnx.export(dynamo=True)``; the TorchScript one refuses the in-place
``copy_`` of HF's cache). Each Gated DeltaNet layer exports HF's per-token recurrence, the
unfused chain gdnc fuses. Batch ``B`` and past length ``P`` are dynamic; weights fp32, inline.

Inputs: ``input_ids`` [B, 1] int64; ``position_ids`` [B, 1] int64 (the token's RoPE position);
``attention_mask`` [B, P + 1] int64 (1 = attend; the P cached positions, then the new token);
per Gated DeltaNet layer i ``conv_state.i`` [B, conv_dim, kernel] and ``recurrent_state.i``
[B, HV, K, V]; per attention layer i ``key.i``, ``value.i`` [B, n_kv, P, head_dim] (keys after
RoPE), all float32 in the layouts of HF's ``DynamicCache``. Outputs: ``logits`` [B, 1, vocab],
then ``present.<name>`` for every state input in the same order (KV: P + 1 positions).

The command line is ``examples/export_decode_onnx.py``.
"""

from __future__ import annotations

from pathlib import Path

import onnx
import torch

from gdnc.atomic import check_target
from gdnc.errors import GdncError
from gdnc.ir.to_onnx import save_onnx

LINEAR = "linear_attention"
TRACE_BATCH, TRACE_PAST = 2, 3  # sample sizes for tracing: neither 0 nor 1, which export specialises


def load_checkpoint(folder: str | Path) -> torch.nn.Module:
    """The HF checkpoint in ``folder`` as a float32 ``Qwen3_5ForCausalLM`` with eager attention."""
    from transformers import Qwen3_5ForCausalLM

    model = Qwen3_5ForCausalLM.from_pretrained(str(folder), dtype=torch.float32, attn_implementation="eager")
    return model.eval()


def state_shapes(config, batch: int, past: int) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every state input, in input order: the Gated DeltaNet layers' conv and
    recurrent states, then the attention layers' keys and values."""
    conv_dim = 2 * config.linear_num_key_heads * config.linear_key_head_dim + (
        config.linear_num_value_heads * config.linear_value_head_dim)
    linear = [i for i, t in enumerate(config.layer_types) if t == LINEAR]
    full = [i for i, t in enumerate(config.layer_types) if t != LINEAR]
    shapes: dict[str, tuple[int, ...]] = {}
    for i in linear:
        shapes[f"conv_state.{i}"] = (batch, conv_dim, config.linear_conv_kernel_dim)
        shapes[f"recurrent_state.{i}"] = (batch, config.linear_num_value_heads, config.linear_key_head_dim,
                                          config.linear_value_head_dim)
    for i in full:
        for kind in ("key", "value"):
            shapes[f"{kind}.{i}"] = (batch, config.num_key_value_heads, past, config.head_dim)
    return shapes


class DecodeStep(torch.nn.Module):
    """``forward(input_ids, position_ids, attention_mask, *states)`` -> ``(logits, *new_states)``:
    HF's forward over a ``DynamicCache`` filled from ``states`` (the order of ``state_shapes``)
    through the cache's own update methods, which copy: the input tensors are never written."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model
        self.names = list(state_shapes(model.config, 1, 0))

    def forward(self, input_ids, position_ids, attention_mask, *states):
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        by_name = dict(zip(self.names, states))
        for i, layer in enumerate(cache.layers):
            if self.model.config.layer_types[i] == LINEAR:
                layer.update_conv_state(by_name[f"conv_state.{i}"])
                layer.update_recurrent_state(by_name[f"recurrent_state.{i}"])
            else:
                layer.update(by_name[f"key.{i}"], by_name[f"value.{i}"])
        out = self.model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                         cache=cache, use_cache=True)
        new = []
        for i, layer in enumerate(cache.layers):
            if self.model.config.layer_types[i] == LINEAR:
                new += [layer.conv_states[0], layer.recurrent_states[0]]
            else:
                new += [layer.keys, layer.values]
        return (out.logits, *new)


def _strip_trace_metadata(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node provenance (stack traces with local paths: ~1 MB here)."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""


def export_decode_step(model: torch.nn.Module, path: str | Path) -> Path:
    """Write the decode step of ``model`` (a float32 ``Qwen3_5ForCausalLM``) to ``path``
    (atomically, one self-contained file); returns ``path``. GdncError if the exported graph
    does not read every input (an input folded into a constant)."""
    path = check_target(path)
    cfg = model.config
    shapes = state_shapes(cfg, TRACE_BATCH, TRACE_PAST)
    gen = torch.Generator().manual_seed(0)
    args = (torch.randint(0, cfg.vocab_size, (TRACE_BATCH, 1), generator=gen),
            torch.full((TRACE_BATCH, 1), TRACE_PAST),
            torch.ones(TRACE_BATCH, TRACE_PAST + 1, dtype=torch.int64),
            *(torch.randn(s, generator=gen) for s in shapes.values()))
    batch, past = torch.export.Dim("batch"), torch.export.Dim("past")
    dynamic = {"input_ids": {0: batch}, "position_ids": {0: batch}, "attention_mask": {0: batch, 1: past + 1},
               "states": tuple({0: batch, 2: past} if n.startswith(("key.", "value.")) else {0: batch}
                               for n in shapes)}
    step = DecodeStep(model).eval()
    with torch.no_grad():
        program = torch.onnx.export(
            step, args, dynamo=True, optimize=True, dynamic_shapes=dynamic,
            input_names=["input_ids", "position_ids", "attention_mask", *shapes],
            output_names=["logits", *(f"present.{n}" for n in shapes)],
        )
    proto = program.model_proto
    read = {name for node in proto.graph.node for name in node.input}
    unread = [i.name for i in proto.graph.input if i.name not in read]
    if unread:
        raise GdncError(f"the exported decode step does not read its inputs {unread}")
    _strip_trace_metadata(proto)
    return save_onnx(proto, path, external_data=False)

