"""aha: reinforcement-learning post-training of language models, from a laptop CPU to GPUs."""

__version__ = "0.1.0"
