"""Serving: an OpenAI-compatible HTTP server whose requests are decoded together in batches."""
