"""The qwen35 / qwen35moe / qwen3next hybrid: gated delta-net layers between attention layers."""
