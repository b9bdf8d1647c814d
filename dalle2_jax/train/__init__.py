"""The one generic trainer: mesh and sharding, train state, checkpoints, metrics, loop."""
