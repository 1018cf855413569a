"""Model families: one folder each (config from GGUF metadata, unfused graph, batch inputs)."""
