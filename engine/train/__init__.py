"""Training: the recipe (trainer), its objective, LoRA, optimisers, checkpoints, events, workers."""
