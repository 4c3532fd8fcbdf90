"""Export to ONNX (stage ``export``), quantization (stage ``quantize``) and the release bundle (stage ``bundle``)."""
