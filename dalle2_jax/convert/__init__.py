"""Importing and exporting external weights (Hugging Face CLIP, ...)."""
