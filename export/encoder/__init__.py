"""Exporting text encoders (all-MiniLM-L6-v2 first): ONNX graph, parity against sentence-transformers, configs."""
