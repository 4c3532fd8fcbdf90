"""edgeslim: distil, prune, factorize, quantize and export Hugging Face transformers to small, fast
ONNX models, measure them on device profiles, and gate releases on the measurements.

The Python API (:mod:`edgeslim.api`) is loaded on first use, so ``import edgeslim`` stays light::

    import edgeslim
    result = edgeslim.run("recipe.yaml", out="runs/mine")
"""

from edgeslim.version import __version__

API = ("run", "bench", "load_recipe", "RunResult")
__all__ = ["__version__", *API]


def __getattr__(name: str):
    if name in API:
        import edgeslim.api

        return getattr(edgeslim.api, name)
    raise AttributeError(f"module 'edgeslim' has no attribute {name!r}")
