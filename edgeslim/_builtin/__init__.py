"""Built-in recipes and device profiles as installed from a wheel (mapped from the top-level
``recipes/`` and ``devices/`` folders of the repository by pyproject.toml)."""
