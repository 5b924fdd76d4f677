"""Open Instruct-style RL post-training with FLIP rewards (backward inference + token F1)."""

__version__ = "0.1.0"
