"""The version of edgeslim (one place; the package, the CLI and every manifest read it here)."""

__version__ = "0.1.0"
