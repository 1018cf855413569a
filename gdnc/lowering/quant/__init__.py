"""GGUF weights kept in the file's precision: ``blocks`` dequantizes GGML blocks with torch ops,
``packed`` holds one weight as its raw bytes and multiplies (or gathers rows) with it a bounded
chunk of rows at a time."""
