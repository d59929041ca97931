"""Exporting any `torch.nn.Module` given as `MODULE:FACTORY`: ONNX graph, tensor parity, configs."""
