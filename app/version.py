"""The ai-proxy release version, kept apart so setup.py can read it without importing Flask."""

__version__ = "0.1.0"
