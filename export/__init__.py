"""Exporters: PyTorch models -> checked ONNX files -> a generated Triton model repository."""
