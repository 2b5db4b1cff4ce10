from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from aha.config import (
    ConfigError,
    config_to_dict,
    describe_options,
    describe_sections,
    load_config,
    option,
    save_config,
)


@dataclass
class ModelSection:
    path: str = option("tiny", help="Model directory or hub id.")
    dtype: Literal["float32", "bfloat16"] = option("float32", help="Weights dtype.")


@dataclass
class TrainSection:
    lr: float = option(1e-3, help="Peak learning rate.")
    steps: int = option(10, help="Optimizer steps.")
    warmup_steps: int = option(0, help="Linear warm-up steps.")
    scheduler: str = option("cosine", help="LR schedule.", choices=("cosine", "linear", "constant"))
    betas: tuple[float, float] = option((0.9, 0.999), help="AdamW betas.")

    def validate(self) -> None:
        if self.warmup_steps > self.steps:
            raise ConfigError(f"warmup_steps ({self.warmup_steps}) must be <= steps ({self.steps})")


@dataclass
class RolloutSection:
    stop_strings: list[str] = option(default_factory=list, help="Stop generation at these strings.")
    seed: int | None = option(None, help="Sampling seed (null: random).")
    temperature: float = option(1.0, help="Sampling temperature.")


@dataclass
class RunConfig:
    run_name: str = option("run", help="Name of the run directory.")
    output_dir: Path = option(Path("runs"), help="Where run directories go.")
    model: ModelSection = option(default_factory=ModelSection, help="The policy model.")
    train: TrainSection = option(default_factory=TrainSection, help="Optimisation.")
    rollout: RolloutSection = option(default_factory=RolloutSection, help="Sampling.")
    reward_weights: dict[str, float] = option({"exact_answer": 1.0}, help="Weight of each reward.")
    debug: bool = option(False, help="Verbose logging.")


@dataclass
class NeedsPath:
    data: str = option(help="Prompt file (required).")
    tags: list[str] = option(["a"], help="Mutable default is copied per instance.")


@dataclass
class CustomDefault:
    # The section's default instance differs from ModelSection's class defaults.
    model: ModelSection = option(default_factory=lambda: ModelSection(path="gpt2"), help="Model.")


@dataclass
class Outer:
    inner: CustomDefault = option(default_factory=CustomDefault, help="A section holding a section.")
    weights: dict[str, float] = option({"a": 1.0}, help="A mapping option.")


@dataclass
class Nested:
    outer: Outer = option(default_factory=lambda: Outer(weights={"b": 2.0}), help="Outer section.")


@dataclass
class Undocumented:
    x: int = 1


@dataclass
class PlainSection:
    # A section declared with dataclasses.field needs no help of its own: its options have it.
    model: ModelSection = field(default_factory=ModelSection)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_without_file_or_overrides():
    cfg = load_config(RunConfig)
    assert cfg == RunConfig()
    assert cfg.train.lr == 1e-3 and cfg.rollout.stop_strings == []


def test_yaml_file_then_overrides_win(tmp_path):
    path = write(tmp_path, "run_name: a\ntrain:\n  lr: 2.0e-4\n  steps: 50\nmodel:\n  dtype: bfloat16\n")
    cfg = load_config(RunConfig, path, ["train.steps=7", "run_name=b"])
    assert cfg.run_name == "b"
    assert cfg.train.lr == 2e-4 and cfg.train.steps == 7
    assert cfg.model == ModelSection(path="tiny", dtype="bfloat16")  # partial section keeps other defaults


def test_override_values_are_yaml():
    cfg = load_config(
        RunConfig,
        overrides=["train.lr=1e-5", 'rollout.stop_strings=["\\n", "END"]', "rollout.seed=3", "debug=true"],
    )
    # PyYAML alone would read 1e-5 as the *string* "1e-5"; aha reads it as a float like YAML 1.2.
    assert cfg.train.lr == 1e-5 and isinstance(cfg.train.lr, float)
    assert cfg.rollout.stop_strings == ["\n", "END"]
    assert cfg.rollout.seed == 3 and cfg.debug is True
    assert load_config(RunConfig, overrides=["rollout.seed=null"]).rollout.seed is None


def test_exponent_floats_in_yaml_files(tmp_path):
    cfg = load_config(RunConfig, write(tmp_path, "train:\n  lr: 3e-4\nrollout:\n  temperature: -1E+0\n"))
    assert cfg.train.lr == 3e-4 and cfg.rollout.temperature == -1.0


def test_int_accepted_for_float_but_not_bool_for_int():
    cfg = load_config(RunConfig, overrides=["rollout.temperature=1"])
    assert cfg.rollout.temperature == 1.0 and isinstance(cfg.rollout.temperature, float)
    with pytest.raises(ConfigError, match=r"^train\.steps: expected int, got True \(bool\)"):
        load_config(RunConfig, overrides=["train.steps=true"])


def test_wrong_type_names_key_value_and_type():
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, overrides=["train.lr=abc"])
    assert str(e.value) == "train.lr: expected float, got 'abc' (str) (from the command line)"


def test_optional_type_error_mentions_null():
    with pytest.raises(ConfigError, match=r"rollout\.seed: expected int \| null, got 'x' \(str\)"):
        load_config(RunConfig, overrides=["rollout.seed=x"])


def test_numbers_on_command_line_are_text_for_str_fields(tmp_path):
    assert load_config(RunConfig, overrides=["run_name=0123"]).run_name == "0123"
    assert load_config(RunConfig, overrides=["model.path=1.10"]).model.path == "1.10"
    # In a YAML file the text is already lost (1.10 -> 1.1), so it must be quoted: an error says so.
    with pytest.raises(ConfigError, match=r"run_name: expected str, got 1\.1 \(float\) \(quote it"):
        load_config(RunConfig, write(tmp_path, "run_name: 1.10\n"))


def test_unknown_key_suggests_and_names_source(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, overrides=["train.lrr=1"])
    assert str(e.value) == "unknown option train.lrr (from the command line); did you mean train.lr?"
    path = write(tmp_path, "trian:\n  lr: 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, path)
    assert str(e.value) == f"unknown option trian (from {path}); did you mean train?"
    with pytest.raises(ConfigError, match=r"unknown option train\.zzz .*the options of train are: lr, steps"):
        load_config(RunConfig, overrides=["train.zzz=1"])


def test_literal_and_choices_are_enforced():
    with pytest.raises(ConfigError, match=r"model\.dtype: expected one of 'float32', 'bfloat16', got 'fp8'"):
        load_config(RunConfig, overrides=["model.dtype=fp8"])
    with pytest.raises(
        ConfigError, match=r"train\.scheduler: 'step' is not one of: cosine, linear, constant"
    ):
        load_config(RunConfig, overrides=["train.scheduler=step"])


def test_missing_required_value():
    with pytest.raises(ConfigError, match=r"^data: missing required value; .* as data=\.\.\."):
        load_config(NeedsPath)
    cfg = load_config(NeedsPath, overrides=["data=x.jsonl"])
    assert cfg.data == "x.jsonl"


def test_mutable_default_is_not_shared():
    a, b = NeedsPath(data="x"), NeedsPath(data="y")
    a.tags.append("b")
    assert b.tags == ["a"]


def test_malformed_overrides():
    with pytest.raises(ConfigError, match=r"malformed override 'train\.lr': expected key=value"):
        load_config(RunConfig, overrides=["train.lr"])
    with pytest.raises(ConfigError, match="malformed override"):
        load_config(RunConfig, overrides=["train..lr=1"])
    with pytest.raises(ConfigError, match=r"train is a value"):
        load_config(RunConfig, overrides=["train=3", "train.lr=1"])


def test_section_given_a_scalar():
    with pytest.raises(ConfigError, match=r"^train: expected a mapping of options, got 3 \(int\)"):
        load_config(RunConfig, overrides=["train=3"])


def test_tuple_length_and_item_types():
    assert load_config(RunConfig, overrides=["train.betas=[0.8, 0.9]"]).train.betas == (0.8, 0.9)
    with pytest.raises(ConfigError, match=r"train\.betas: expected 2 items"):
        load_config(RunConfig, overrides=["train.betas=[0.8]"])
    with pytest.raises(ConfigError, match=r"train\.betas\[1\]: expected float, got 'x'"):
        load_config(RunConfig, overrides=["train.betas=[0.8, x]"])


def test_dict_fields():
    cfg = load_config(RunConfig, overrides=["reward_weights.format=0.5"])
    assert cfg.reward_weights == {"format": 0.5}  # a given mapping replaces the default mapping
    with pytest.raises(ConfigError, match=r"reward_weights\.format: expected float"):
        load_config(RunConfig, overrides=["reward_weights.format=high"])


def test_bare_dict_and_list_values_hold_any_yaml():
    """A reward function's options (`dict[str, dict]`) hold whatever that function takes: the documented
    `rewards.options={math_answer: {bad_gold: skip, timeout_s: 2}}` failed with 'not supported'."""
    from aha.train.grpo_config import GRPORunConfig

    options = "rewards.options={math_answer: {bad_gold: skip, timeout_s: 2, tags: [a, b]}}"
    cfg = load_config(GRPORunConfig, overrides=["rewards.functions=[math_answer]", options])
    assert cfg.rewards.options == {"math_answer": {"bad_gold": "skip", "timeout_s": 2, "tags": ["a", "b"]}}
    with pytest.raises(ConfigError, match=r"rewards\.options\.math_answer: expected dict"):
        load_config(
            GRPORunConfig, overrides=["rewards.functions=[math_answer]", "rewards.options={math_answer: 3}"]
        )


def test_validate_runs_with_section_prefix():
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, overrides=["train.warmup_steps=20"])
    assert str(e.value) == "train: warmup_steps (20) must be <= steps (10) (from the command line)"


def test_partial_section_merges_over_the_fields_default_instance():
    assert load_config(CustomDefault).model.path == "gpt2"
    cfg = load_config(CustomDefault, overrides=["model.dtype=bfloat16"])
    assert cfg.model == ModelSection(path="gpt2", dtype="bfloat16")
    # Two levels deep; a mapping option inside a section is replaced, not merged.
    cfg = load_config(Nested, overrides=["outer.inner.model.dtype=bfloat16", "outer.weights.c=3"])
    assert cfg.outer.inner.model == ModelSection(path="gpt2", dtype="bfloat16")
    assert cfg.outer.weights == {"c": 3.0}
    assert load_config(Nested).outer.weights == {"b": 2.0}


def test_yaml_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(RunConfig, tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected a mapping of option names to values, got list"):
        load_config(RunConfig, write(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(RunConfig, write(tmp_path, "train: [1,\n"))
    assert load_config(RunConfig, write(tmp_path, "")) == RunConfig()


def test_save_and_reload_round_trip(tmp_path):
    cfg = load_config(
        RunConfig,
        overrides=[
            "train.lr=1e-5",
            'rollout.stop_strings=["\\n", "a: b", "#"]',
            "train.betas=[0.5, 0.25]",
            "output_dir=/tmp/x y",
            "run_name=007",
        ],
    )
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    loaded = load_config(RunConfig, path)
    assert loaded == cfg
    assert isinstance(loaded.train.betas, tuple) and loaded.output_dir == Path("/tmp/x y")
    assert config_to_dict(cfg)["train"]["betas"] == [0.5, 0.25]


def test_describe_options_lists_every_leaf():
    rows = {key: (tp, default, help_) for key, tp, default, help_ in describe_options(RunConfig)}
    assert list(rows)[:3] == ["run_name", "output_dir", "model.path"]
    assert rows["train.lr"] == ("float", "0.001", "Peak learning rate.")
    assert rows["model.dtype"][0] == "float32|bfloat16"
    assert rows["rollout.seed"] == ("int | null", "null", "Sampling seed (null: random).")
    assert rows["rollout.stop_strings"][:2] == ("list[str]", "[]")
    assert rows["train.scheduler"][2] == "LR schedule. Choices: cosine, linear, constant."
    assert rows["reward_weights"][1] == "{exact_answer: 1.0}"
    assert describe_options(NeedsPath)[0] == ("data", "str", "(required)", "Prompt file (required).")
    assert dict((k, d) for k, _, d, _ in describe_options(CustomDefault))["model.path"] == "gpt2"


def test_describe_options_requires_help_text_on_options_not_sections():
    with pytest.raises(TypeError, match=r"Undocumented\.x has no help text"):
        describe_options(Undocumented)
    assert [row[0] for row in describe_options(PlainSection)] == ["model.path", "model.dtype"]


def test_describe_sections():
    assert describe_sections(RunConfig) == {
        "model": "The policy model.",
        "train": "Optimisation.",
        "rollout": "Sampling.",
    }
    assert describe_sections(PlainSection) == {}


def test_unsupported_annotation_is_a_programming_error():
    @dataclass
    class Weird:
        x: set = field(default_factory=set)

    with pytest.raises(TypeError, match="not supported"):
        load_config(Weird, overrides=["x=[1]"])


def test_a_bad_value_in_a_file_is_named_with_its_file_and_line(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  path: gpt2\ntrain:\n  steps: 5\n  lr: abc\n")
    with pytest.raises(ConfigError) as e:
        load_config(RunConfig, path)
    assert str(e.value) == f"{path}: line 5: train.lr: expected float, got 'abc' (str)"
    path.write_text("train:\n  steps: 5\n  warmup_steps: 20\n")  # a section's check names the section's line
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: line 1: train: warmup_steps \(20\)"):
        load_config(RunConfig, path)


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf"])
def test_non_finite_numbers_are_refused(tmp_path, text):
    with pytest.raises(ConfigError, match="train.lr: expected a finite number"):
        load_config(RunConfig, overrides=[f"train.lr={text}"])


@dataclass
class FromBase(RunConfig):
    base: str | None = option(None, help="Name of a base config to start from.")

    @classmethod
    def base_options(cls, given: dict) -> dict:
        if given.get("base") != "fast":
            return {}
        return {"train": {"lr": 0.5, "steps": 3}, "reward_weights": {"a": 1.0, "b": 2.0}, "debug": True}


def test_base_options_fill_in_under_what_is_given(tmp_path):
    """A class's base_options(given) supplies values for what was not given: sections merge key by key,
    a dict-typed option given whole replaces the base's, and the file and the command line both win."""
    path = tmp_path / "c.yaml"
    path.write_text("base: fast\ntrain: {steps: 7}\n")
    cfg = load_config(FromBase, path, ["reward_weights={c: 3.0}"])
    assert (cfg.train.lr, cfg.train.steps, cfg.train.warmup_steps) == (0.5, 7, 0)
    assert cfg.reward_weights == {"c": 3.0} and cfg.debug is True
    assert load_config(FromBase, overrides=["debug=false"]) == FromBase(debug=False)  # no base: defaults
