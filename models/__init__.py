"""On-device inference with ONNX Runtime and the model manifest."""
