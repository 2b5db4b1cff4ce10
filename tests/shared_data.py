"""Where the project's real public data (GSM8K, MATH-500, hh-rlhf) lies: $AHA_SHARED_DATA, else the first
`shared/data` beside the checkout or one of its parents, else /work/shared/data."""

import os
from pathlib import Path


def _find() -> Path:
    if os.environ.get("AHA_SHARED_DATA"):
        return Path(os.environ["AHA_SHARED_DATA"])
    for parent in Path(__file__).resolve().parents:
        if (parent / "shared" / "data").is_dir():
            return parent / "shared" / "data"
    return Path("/work/shared/data")


SHARED_DATA = _find()
