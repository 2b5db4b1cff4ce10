"""`aha eval`: a model (or a run's checkpoint) on held-out prompts, n samples each, scored by the same
reward functions as training: accuracy, pass@k and majority-vote accuracy, with every completion kept."""
