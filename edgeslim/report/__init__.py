"""Report: the benchmark matrix, the release gate and its renderings."""
