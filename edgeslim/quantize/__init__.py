"""Quantization: the ways to quantize (``specs``: one config per mode), onnxruntime's and
neural-compressor's quantizers (``ort``, ``inc``), what a candidate is measured on (``measure``), the
choice among candidates (``select``) and the ``quantize`` / ``plain-quantize`` stages (``stage``)."""
