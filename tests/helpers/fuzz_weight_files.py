"""Child process of the weight-file fuzz tests (tests/test_faults_fuzz.py): loads `count` seeded damaged
copies of a good file through one aha loader and prints one JSON line per copy.

Run apart from pytest so that what the fuzz must never see shows as such: a crash kills only this
process (the parent sees its exit status), a hang outlives the parent's timeout (the last
`started` line on stderr names the copy), and an allocation of more than 2 GiB fails, since the address
space is capped at what the process has mapped after its imports plus 2 GiB.

usage: fuzz_weight_files.py {safetensors,model_dir,gguf} GOOD_FILE_OR_DIR COUNT SEED WORK_DIR
"""

from __future__ import annotations

import json
import logging
import random
import resource
import shutil
import sys
from pathlib import Path

HELPERS = str(Path(__file__).parent)
sys.path.remove(HELPERS)  # last, not first: its kernels.py would shadow the package transformers imports
sys.path.append(HELPERS)

import torch  # noqa: E402, F401  (imported before the cap: its own mappings are not what is measured)
from weight_mutants import gguf_mutants, safetensors_mutants  # noqa: E402

from aha.models.gguf import convert_gguf  # noqa: E402
from aha.models.loading import load_model  # noqa: E402
from aha.models.weight_files import WeightFileError, load_safetensors  # noqa: E402

ROOM = 2 << 30


def cap_address_space() -> None:
    with open("/proc/self/status") as status:
        mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize"))
    resource.setrlimit(resource.RLIMIT_AS, (mapped + ROOM, resource.getrlimit(resource.RLIMIT_AS)[1]))


def main() -> None:
    kind, good, count, seed, work = (
        sys.argv[1],
        Path(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
        Path(sys.argv[5]),
    )
    logging.disable(logging.WARNING)  # transformers' progress and load notes; outcomes are printed below
    rng = random.Random(seed)
    work.mkdir(parents=True, exist_ok=True)
    if kind == "gguf":
        mutants, target = gguf_mutants(good, rng, count), work / "model.gguf"
    elif kind == "model_dir":
        shutil.copytree(good, work / "model")
        mutants = safetensors_mutants((good / "model.safetensors").read_bytes(), rng, count)
        target = work / "model" / "model.safetensors"
    else:
        mutants, target = safetensors_mutants(good.read_bytes(), rng, count), work / "model.safetensors"
    cap_address_space()
    for i, (what, data) in enumerate(mutants):
        print(f"started {i}: {what}", file=sys.stderr, flush=True)
        target.write_bytes(data)
        shutil.rmtree(work / "converted", ignore_errors=True)
        result = {"i": i, "what": what, "path": str(target), "outcome": "loaded"}
        try:
            if kind == "gguf":
                convert_gguf(target, work / "converted")
            elif kind == "model_dir":
                load_model(str(target.parent))
            else:
                load_safetensors(target)
        except WeightFileError as err:
            result.update(outcome="WeightFileError", message=str(err))
        except Exception as err:  # noqa: BLE001  (anything else is what the test reports)
            result.update(outcome=type(err).__name__, message=str(err)[:500])
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
