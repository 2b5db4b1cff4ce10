"""Fuzzed input files and command lines: every malformed case ends in one error naming the file, the line
(or record / row) and the field, never a traceback from deep inside; well-formed files load every record.

Each generated file is a list of lines, each drawn as a good record or as one kind of damage, so the
expected outcome is known exactly: all records back in order, or a DataError/ConfigError at the first
damaged line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import string
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aha.cli import main
from aha.config import ConfigError, load_config
from aha.data.preferences import load_pairs
from aha.data.prompts import DataError, load_prompt_file
from aha.train.grpo import GRPORunConfig

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=20)  # any Unicode but lone surrogates
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | text
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=6,
)


def record_line(required: dict[str, st.SearchStrategy]) -> st.SearchStrategy:
    """(line text, None) for a good record with the `required` string fields, or (line text, damage)."""
    good = st.fixed_dictionaries(required, optional={"answer": json_values, "meta": json_values})
    missing = st.sampled_from(sorted(required)).flatmap(
        lambda name: good.map(
            lambda r: ({k: v for k, v in r.items() if k != name}, f'missing field "{name}"')
        )
    )
    wrong_type = st.tuples(
        st.sampled_from(sorted(required)), st.integers() | st.booleans() | st.none() | st.floats()
    ).flatmap(lambda named: good.map(lambda r: ({**r, named[0]: named[1]}, f'field "{named[0]}"')))
    return st.one_of(
        good.map(lambda r: (json.dumps(r), None)),
        good.map(lambda r: (json.dumps(r)[:-1], "invalid JSON")),  # cut short
        (json_scalars | st.lists(json_scalars, max_size=3)).map(
            lambda v: (json.dumps(v), "expected a JSON object")
        ),
        missing.map(lambda rd: (json.dumps(rd[0]), rd[1])),
        wrong_type.map(lambda rd: (json.dumps(rd[0]), rd[1])),
    )


def expect(path, lines: list[tuple[str, str | None]], load, unit: str = "line"):
    """Load and check: every record when nothing is damaged, else one error at the first damage."""
    damaged = [(i, why) for i, (_, why) in enumerate(lines, start=1) if why is not None]
    if not damaged:
        records = load(path)
        assert len(records) == len(lines)  # nothing silently dropped
        return records
    number, why = damaged[0]
    with pytest.raises(DataError) as e:
        load(path)
    message = str(e.value)
    assert message.startswith(f"{path}: {unit} {number}: "), message
    assert why in message, message
    return None


@FUZZ
@given(st.lists(record_line({"prompt": text}), min_size=1, max_size=6))
def test_fuzzed_prompt_jsonl(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("fuzz") / "prompts.jsonl"
    path.write_text("".join(line + "\n" for line, _ in lines), encoding="utf-8")
    examples = expect(path, lines, load_prompt_file)
    if examples is not None:
        assert [ex.prompt for ex in examples] == [json.loads(line)["prompt"] for line, _ in lines]


@FUZZ
@given(st.lists(record_line({"prompt": text}), min_size=1, max_size=6))
def test_fuzzed_prompt_json_list(tmp_path_factory, lines):
    """A .json list: records are numbered; broken JSON is reported at its line in the file."""
    path = tmp_path_factory.mktemp("fuzz") / "prompts.json"
    items = [line for line, why in lines if why != "invalid JSON"]
    path.write_text("[\n" + ",\n".join(items) + "\n]\n", encoding="utf-8")
    kept = [(line, why) for line, why in lines if why != "invalid JSON"]
    if kept:
        expect(path, kept, load_prompt_file, unit="record")


@FUZZ
@given(st.lists(record_line({"prompt": text}), min_size=1, max_size=6))
def test_fuzzed_prompt_parquet(tmp_path_factory, lines):
    """Parquet holds typed columns, not lines: good tables load whole, any damage is one DataError naming
    the file (a row and field where the column's type allows the damage to be stored at all)."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path_factory.mktemp("fuzz") / "prompts.parquet"
    good = [json.loads(line) for line, why in lines if why is None]
    if good:
        pq.write_table(pa.Table.from_pylist([{"prompt": r["prompt"]} for r in good]), path)
        assert [ex.prompt for ex in load_prompt_file(path)] == [r["prompt"] for r in good]


@FUZZ
@given(st.binary(min_size=1, max_size=200))
def test_random_bytes_in_any_format_are_one_clear_error(tmp_path_factory, data):
    for name in ("prompts.jsonl", "prompts.jsonl.gz", "prompts.json", "prompts.parquet"):
        path = tmp_path_factory.mktemp("fuzz") / name
        path.write_bytes(data)
        try:
            load_prompt_file(path)  # random bytes can be a valid file (e.g. '{"prompt": ""}'), rarely
        except DataError as e:
            assert str(e).startswith(f"{path}: "), str(e)


@FUZZ
@given(st.lists(record_line({"prompt": text, "chosen": text, "rejected": text}), min_size=1, max_size=6))
def test_fuzzed_preference_pairs(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("fuzz") / "pairs.jsonl"
    path.write_text("".join(line + "\n" for line, _ in lines), encoding="utf-8")
    expect(path, lines, load_pairs)


config_keys = st.sampled_from(["train", "algo", "rollout", "model", "optim", "x"]).flatmap(
    lambda section: st.sampled_from(["steps", "beta", "group_size", "lr", "path", "temperature", "nope"]).map(
        lambda name: f"{section}.{name}"
    )
)
yaml_values = st.sampled_from(
    ["1", "-3", "0.5", "1e-5", ".nan", ".inf", "abc", "[1, 2", "{a: 1}", "[]", "null", "true", "'7'", "x: y"]
)


@FUZZ
@given(st.lists(st.tuples(config_keys, yaml_values), min_size=1, max_size=4))
def test_fuzzed_yaml_config_files(tmp_path_factory, entries):
    """A config file of random keys and values either loads or raises one ConfigError naming the file."""
    path = tmp_path_factory.mktemp("fuzz") / "run.yaml"
    sections: dict[str, list[str]] = {}
    for key, value in entries:
        section, name = key.split(".")
        sections.setdefault(section, []).append(f"  {name}: {value}")
    path.write_text("".join(f"{s}:\n" + "\n".join(body) + "\n" for s, body in sections.items()))
    try:
        load_config(GRPORunConfig, path)
    except ConfigError as e:
        message = str(e)
        assert message.startswith(f"{path}: ") or message.startswith("unknown option"), message
        assert "line " in message or "unknown option" in message, message


@FUZZ
@given(
    st.lists(
        st.tuples(config_keys, yaml_values) | st.text(string.printable, max_size=12).map(lambda t: (t, None)),
        min_size=1,
        max_size=3,
    )
)
def test_fuzzed_command_line_overrides(capsys, items):
    """`aha grpo key=value ...`: exit 0 (a valid config printed) or 2 with one 'error:' line block; never
    a traceback."""
    argv = ["grpo", "--print-config", *(f"{k}={v}" if v is not None else k for k, v in items)]
    code = main(argv)
    err = capsys.readouterr().err
    assert code in (0, 2), err
    if code == 2:
        assert err.startswith("error: ") and "Traceback" not in err, err
        first = err.splitlines()[0]
        given = argv[2:]
        sections = {arg.split(".")[0].split("=")[0].strip() for arg in given}
        named = any(s and s in first for s in sections) or any(repr(arg)[1:-1] in first for arg in given)
        assert named, first  # the error names the argument (or its section) that was wrong


# ---------------------------------------------------------------------------------------------------------
# Weight files: seeded damaged copies of a good safetensors / GGUF file, loaded in a child process
# (tests/helpers/fuzz_weight_files.py) whose address space is capped at 2 GiB above what its imports
# mapped. Each copy must load or raise one WeightFileError starting with its path; a crash, a hang (the
# timeout) or a multi-GB allocation (MemoryError under the cap) fails the test, naming the copy.

WEIGHT_FUZZ_SEED = 0
WEIGHT_FUZZ_TIMEOUT_S = 240  # 200 copies take ~15 s on a busy 2-core machine; only a hang comes near


def fuzz_weight_files(kind: str, good: Path, count: int, work: Path) -> list[dict]:
    child = Path(__file__).parent / "helpers" / "fuzz_weight_files.py"
    # this checkout's aha first; not the parent's sys.path, which other test modules may have given
    # tests/helpers, whose kernels.py would shadow the package transformers imports
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    try:
        proc = subprocess.run(
            [sys.executable, str(child), kind, str(good), str(count), str(WEIGHT_FUZZ_SEED), str(work)],
            capture_output=True,
            text=True,
            timeout=WEIGHT_FUZZ_TIMEOUT_S,
            env=env,
        )
    except subprocess.TimeoutExpired as e:
        started = (e.stderr or b"").decode(errors="replace").strip().splitlines()
        pytest.fail(f"hung on {started[-1] if started else 'its imports'}")
    last = proc.stderr.strip().splitlines()[-1:] or ["nothing"]
    assert proc.returncode == 0, (
        f"the child died (status {proc.returncode}) after {last[0]}:\n{proc.stderr[-3000:]}"
    )
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == count
    for r in results:
        assert r["outcome"] in ("loaded", "WeightFileError"), r  # never MemoryError, IndexError, ...
        if r["outcome"] == "WeightFileError":
            assert r["message"].startswith(f"{r['path']}: ") and "\n" not in r["message"], r
        if r["what"].startswith(("cut to", "header length")):  # these never describe a whole file
            assert r["outcome"] == "WeightFileError", r
    return results


def test_fuzzed_safetensors_files_load_or_fail_naming_the_file(tmp_path):
    """200 damaged copies through the checkpoint loader (`load_safetensors`), 40 as a model directory's
    model.safetensors through `load_model` (from_pretrained)."""
    from aha.models.tiny import create_tiny_model

    good = create_tiny_model(tmp_path / "tiny", seed=0)
    results = fuzz_weight_files("safetensors", good / "model.safetensors", 200, tmp_path / "a")
    results += fuzz_weight_files("model_dir", good, 40, tmp_path / "b")
    assert sum(r["outcome"] == "WeightFileError" for r in results) > len(results) / 2  # the damage was seen


def test_fuzzed_gguf_files_convert_or_fail_naming_the_file(tmp_path):
    """200 damaged copies of a tiny Llama GGUF through `convert_gguf` (the gguf package's reader
    itself hangs, raises IndexError or runs out of memory on many of them)."""
    pytest.importorskip("gguf")
    sys.path.append(str(Path(__file__).parent / "helpers"))
    from tiny_gguf import write_tiny_llama_gguf

    good = tmp_path / "tiny.gguf"
    write_tiny_llama_gguf(good, seed=0)
    results = fuzz_weight_files("gguf", good, 200, tmp_path / "work")
    assert sum(r["outcome"] == "WeightFileError" for r in results) > len(results) / 2


def rename_a_weight_away(model_dir: Path) -> str:
    """Rename the last weight of model_dir/model.safetensors (the header stays consistent, so the header
    check passes): the model's loader finds that weight missing. Returns its name."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(model_dir / "model.safetensors")
    name = sorted(tensors)[-1]
    tensors[name.replace("weight", "wieght")] = tensors.pop(name)
    save_file(tensors, model_dir / "model.safetensors", metadata={"format": "pt"})
    return name


def test_a_model_directory_missing_a_weight_is_refused(tmp_path):
    """A weight renamed in model.safetensors: transformers would initialise the missing weight at random
    and only log it; load_model refuses."""
    from aha.models.loading import load_model
    from aha.models.tiny import create_tiny_model
    from aha.models.weight_files import WeightFileError

    good = create_tiny_model(tmp_path / "tiny", seed=0)
    name = rename_a_weight_away(good)
    expected = f"{good}: weights missing or of the wrong shape: ['{name}']"
    with pytest.raises(WeightFileError, match="^" + re.escape(expected)):
        load_model(str(good))


def test_a_scoring_model_missing_a_backbone_weight_is_refused_and_a_new_head_is_quiet(tmp_path, caplog):
    """load_scalar_model (reward models, the critic): a plain LM has no score head, so a new one is made
    (said in one log line, not transformers' load report); a backbone weight renamed away is a damaged
    file, refused as load_model refuses it."""
    from aha.models.scalar_head import load_scalar_model
    from aha.models.tiny import create_tiny_model
    from aha.models.weight_files import WeightFileError

    good = create_tiny_model(tmp_path / "tiny", seed=0)
    caplog.set_level(logging.INFO, logger="aha.models.scalar_head")
    load_scalar_model(str(good))
    assert "LOAD REPORT" not in caplog.text
    assert f"{good} has no score head: a new one (['score.weight'])" in caplog.text
    name = rename_a_weight_away(good)
    expected = f"{good}: backbone weights missing or of the wrong shape: ['{name}']"
    with pytest.raises(WeightFileError, match="^" + re.escape(expected)):
        load_scalar_model(str(good))
