"""What each ONNX op computes (torch implementations), below the passes and the runtime."""
