"""What runs a model on one machine: the generation loop, continuous batching, the prefix cache, the
single-process pipeline and giving memory back."""
