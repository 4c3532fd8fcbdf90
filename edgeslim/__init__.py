"""edgeslim: distil, prune, factorize, quantize and export Hugging Face transformers to small, fast
ONNX models, measure them on device profiles, and gate releases on the measurements."""

__version__ = "0.1.0"
