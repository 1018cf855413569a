"""Write the bundled example: HF's per-token gated delta rule exported with torch.onnx.export.

The model is ``torch_recurrent_gated_delta_rule`` of transformers' Qwen3-Next, with GVA
(2 key heads, 4 value heads), l2-normalised q/k, head dim 16, T = 16 tokens, batch 2, fixed
at trace time as exporters do. Usage: ``python examples/make_example.py [OUT.onnx]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from transformers.models.qwen3_next.modeling_qwen3_next import torch_recurrent_gated_delta_rule

B, T, H, HV, K, V = 2, 16, 2, 4, 16, 16


class RecurrentGatedDeltaRule(torch.nn.Module):
    def forward(self, q, k, v, g, beta, initial_state):
        return torch_recurrent_gated_delta_rule(
            q, k, v, g, beta, initial_state, output_final_state=True, use_qk_l2norm_in_kernel=True
        )


def main(out: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    args = (
        torch.randn(B, T, H, K, generator=gen),
        torch.randn(B, T, H, K, generator=gen),
        torch.randn(B, T, HV, V, generator=gen),
        -torch.nn.functional.softplus(torch.randn(B, T, HV, generator=gen)),
        torch.sigmoid(torch.randn(B, T, HV, generator=gen)),
        torch.randn(B, HV, K, V, generator=gen),
    )
    torch.onnx.export(
        RecurrentGatedDeltaRule(), args, str(out), dynamo=True, optimize=True,
        input_names=["q", "k", "v", "g", "beta", "initial_state"],
        output_names=["o", "final_state"], external_data=False,
    )


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name(
        "hf_recurrent_gated_delta_rule_t16.onnx")))
