"""Metrics on generated images."""
