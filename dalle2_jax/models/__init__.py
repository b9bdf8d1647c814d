"""Flax linen modules only: shared layers, CLIP, the prior transformer and the U-Net."""
