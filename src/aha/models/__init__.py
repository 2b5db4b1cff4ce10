"""Model loading, the built-in tiny model, and the shared teacher-forced forward pass."""

from transformers.utils import logging as _hf_logging

# aha draws its own progress bars; HF's per-shard bars on every save/load would bury them.
_hf_logging.disable_progress_bar()
