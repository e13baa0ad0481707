"""Inference: backends (torch, ONNX Runtime, OpenVINO), the predictor, Grad-CAM, overlays, heatmap files."""
