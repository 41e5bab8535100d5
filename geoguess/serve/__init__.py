"""Serving trained runs over HTTP: `python -m geoguess.serve` (see docs/serve.md)."""
