"""Torch-side compression stages: distillation, pruning, low-rank factorization, vocabulary trimming.

Each stage module here registers itself with :func:`edgeslim.pipeline.register_stage` on import;
``students``, ``losses``, ``trainer`` and ``teacher_cache`` are the shared building blocks.
"""
