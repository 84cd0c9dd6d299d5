"""One blueprint per client-facing API surface."""
