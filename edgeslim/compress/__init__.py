"""Torch-side compression stages: distillation, pruning, low-rank factorization, vocabulary trimming.

Each stage is a torch-free ``<stage>_config`` module (recipe keys and registration with
:func:`edgeslim.stage.register_stage`) plus the module that runs it; ``students``, ``losses``,
``trainer`` and ``teacher_cache`` are the shared building blocks.
"""
