"""The reward contract: registry, import paths, specs, and composition with errors that name their sample."""

from __future__ import annotations

import math
import textwrap

import pytest
import torch
from helpers.toy_rewards import SeenCount  # a reward with state: the completions scored so far

from aha.rewards import BUILTIN_REWARDS
from aha.rewards.base import (
    RewardConfigError,
    RewardError,
    RewardScores,
    RewardSpec,
    compute_rewards,
    load_reward_state,
    make_reward_specs,
    register_reward,
    resolve_reward_fn,
    reward_state,
    state_kept,
)


def length_reward(prompts, completions, **kwargs):
    return [float(len(c)) for c in completions]


def constant(value):
    return lambda prompts, completions, **kwargs: [value] * len(completions)


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A user's reward module on sys.path, as "my_rewards"."""
    (tmp_path / "my_rewards.py").write_text(
        textwrap.dedent(
            """
            NOT_CALLABLE = 3

            def shout(prompts, completions, *, bonus=0.0, **kwargs):
                return [1.0 + bonus if c.isupper() else 0.0 for c in completions]

            class Scaled:
                def __init__(self, scale=1.0):
                    self.scale = scale

                def __call__(self, prompts, completions, **kwargs):
                    return [self.scale * len(c) for c in completions]
            """
        )
    )
    (tmp_path / "broken_rewards.py").write_text("import a_module_that_does_not_exist\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return "my_rewards"


def test_every_builtin_named_in_the_contract_is_registered():
    names = {
        "exact_answer",
        "math_answer",
        "countdown",
        "format_think_answer",
        "format_think_answer_lenient",
        "gsm8k",
    }
    assert names <= set(BUILTIN_REWARDS)
    for name in names:
        assert resolve_reward_fn(name) is BUILTIN_REWARDS[name]


def test_unknown_builtin_lists_the_builtins():
    with pytest.raises(RewardConfigError, match="unknown reward function 'nope'.*exact_answer.*import path"):
        resolve_reward_fn("nope")


def test_register_reward_refuses_a_second_function_under_a_taken_name():
    with pytest.raises(ValueError, match="already registered"):
        register_reward("exact_answer")(length_reward)


def test_import_path_resolves_a_user_function(user_module):
    fn = resolve_reward_fn(f"{user_module}:shout")
    assert fn(["p", "p"], ["YES", "no"]) == [1.0, 0.0]


def test_import_path_errors_name_what_is_wrong(user_module):
    with pytest.raises(RewardConfigError, match="module 'no_such_module' not found"):
        resolve_reward_fn("no_such_module:fn")
    with pytest.raises(
        RewardConfigError, match="importing 'broken_rewards' failed.*a_module_that_does_not_exist"
    ):
        resolve_reward_fn("broken_rewards:fn")
    with pytest.raises(RewardConfigError, match="'my_rewards' has no attribute 'missing'"):
        resolve_reward_fn(f"{user_module}:missing")
    with pytest.raises(RewardConfigError, match="'NOT_CALLABLE' is a int, not callable"):
        resolve_reward_fn(f"{user_module}:NOT_CALLABLE")
    with pytest.raises(RewardConfigError, match="must look like 'package.module:function'"):
        resolve_reward_fn(":shout")


def test_options_reach_a_class_a_function_and_a_builtin(user_module):
    scaled = resolve_reward_fn(f"{user_module}:Scaled", {"scale": 2.0})
    assert scaled(["p"], ["abc"]) == [6.0]
    shout = resolve_reward_fn(f"{user_module}:shout", {"bonus": 0.5})
    assert shout(["p"], ["YES"]) == [1.5]
    lenient = resolve_reward_fn("math_answer", {"fallback_last_number": True})
    assert lenient.fallback_last_number and not BUILTIN_REWARDS["math_answer"].fallback_last_number
    with pytest.raises(RewardConfigError, match="bad options.*unknown options \\['colour'\\]"):
        resolve_reward_fn("math_answer", {"colour": "red"})
    with pytest.raises(RewardConfigError, match="cannot create it with options"):
        resolve_reward_fn(f"{user_module}:Scaled", {"colour": "red"})


def test_bound_options_refuse_to_shadow_a_dataset_field(user_module):
    shout = resolve_reward_fn(f"{user_module}:shout", {"bonus": 0.5})
    specs = [RewardSpec("shout", shout)]
    with pytest.raises(RewardError, match="same names as dataset fields"):
        compute_rewards(specs, ["p"], ["YES"], {"bonus": [1.0]})


def test_make_reward_specs_accepts_names_and_mappings(user_module):
    specs = make_reward_specs(
        [
            "exact_answer",
            {"fn": f"{user_module}:shout", "weight": 0.5},
            {"fn": "gsm8k", "name": "acc", "weight": 2},
        ]
    )
    assert [(s.name, s.weight) for s in specs] == [("exact_answer", 1.0), ("shout", 0.5), ("acc", 2.0)]
    assert specs[0].fn is BUILTIN_REWARDS["exact_answer"]


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"fn": "exact_answer", "weight": float("nan")}, "weight must be a finite number"),
        ({"fn": "exact_answer", "weight": True}, "weight must be a finite number"),
        ({"fn": "exact_answer", "scale": 1}, "unknown keys \\['scale'\\]"),
        ({"weight": 1.0}, "missing 'fn'"),
        (3, "expected a string or a mapping"),
    ],
)
def test_make_reward_specs_rejects_bad_entries(entry, message):
    with pytest.raises(RewardConfigError, match=message):
        make_reward_specs([entry])


def test_make_reward_specs_rejects_duplicate_names():
    with pytest.raises(RewardConfigError, match="two reward functions are named 'exact_answer'"):
        make_reward_specs(["exact_answer", "exact_answer"])


def test_total_is_the_weighted_sum_and_each_mean_is_logged():
    specs = [RewardSpec("len", length_reward, 0.5), RewardSpec("one", constant(1.0), 2.0)]
    result = compute_rewards(specs, ["a", "b", "c"], ["x", "xyz", ""], {})
    # len: [1, 3, 0] -> 0.5 * len + 2 * 1 = [2.5, 3.5, 2.0]; mean(len) = 4/3
    assert torch.equal(result.total, torch.tensor([2.5, 3.5, 2.0]))
    assert result.total.dtype == torch.float32
    assert torch.equal(result.per_fn["len"], torch.tensor([1.0, 3.0, 0.0]))
    assert result.metrics["reward/len/mean"] == pytest.approx(4 / 3)
    assert result.metrics["reward/one/mean"] == 1.0
    assert result.metrics["reward/len/errors"] == 0 and result.metrics["reward/len/none"] == 0


def test_fields_reach_the_functions_aligned_with_completions():
    seen = {}

    def spy(prompts, completions, answer, **kwargs):
        seen.update(prompts=prompts, completions=completions, answer=answer, other=kwargs)
        return [float(a == c) for a, c in zip(answer, completions, strict=True)]

    result = compute_rewards(
        [RewardSpec("spy", spy)], ["p1", "p2"], ["4", "5"], {"answer": ["4", "6"], "id": [1, 2]}
    )
    assert seen == {
        "prompts": ["p1", "p2"],
        "completions": ["4", "5"],
        "answer": ["4", "6"],
        "other": {"id": [1, 2]},
    }
    assert result.total.tolist() == [1.0, 0.0]


def test_none_means_not_applicable_and_is_counted():
    specs = [RewardSpec("maybe", lambda p, c, **k: [1.0, None, 0.5])]
    result = compute_rewards(specs, ["a"] * 3, ["x"] * 3, {}, none_value=-1.0)
    assert result.total.tolist() == [1.0, -1.0, 0.5]
    assert result.metrics["reward/maybe/none"] == 1
    assert result.metrics["reward/maybe/mean"] == pytest.approx(0.5 / 3)


def test_own_metrics_of_a_function_are_logged_under_its_name():
    specs = [RewardSpec("m", lambda p, c, **k: RewardScores([1.0, 0.0], {"no_answer": 1}))]
    result = compute_rewards(specs, ["a", "b"], ["x", "y"], {})
    assert result.metrics["reward/m/no_answer"] == 1.0


def failing_on_bad(prompts, completions, **kwargs):
    if "bad" in completions:
        raise ZeroDivisionError("cannot score 'bad'")
    return [1.0] * len(completions)


def test_a_raising_function_is_named_with_the_failing_sample_and_the_cause_chained():
    specs = [RewardSpec("fragile", failing_on_bad)]
    with pytest.raises(RewardError) as info:
        compute_rewards(specs, ["p0", "p1", "the prompt"], ["ok", "ok", "bad"], {})
    message = str(info.value)
    assert "'fragile'" in message and "sample 2" in message and "ZeroDivisionError" in message
    assert "prompt: 'the prompt'" in message and "completion: 'bad'" in message
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_with_a_fallback_only_the_failing_samples_get_it_and_are_counted():
    specs = [RewardSpec("fragile", failing_on_bad), RewardSpec("one", constant(1.0))]
    result = compute_rewards(specs, ["p"] * 3, ["ok", "bad", "ok"], {}, on_error=-0.5)
    assert result.per_fn["fragile"].tolist() == [1.0, -0.5, 1.0]
    assert result.total.tolist() == [2.0, 0.5, 2.0]
    assert result.metrics["reward/fragile/errors"] == 1
    assert result.metrics["reward/one/errors"] == 0


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), "high"])
def test_nan_inf_and_non_numbers_are_errors_naming_the_sample(bad_value):
    specs = [RewardSpec("odd", lambda p, c, **k: [0.0, bad_value])]
    with pytest.raises(RewardError, match="'odd' returned .* for sample 1"):
        compute_rewards(specs, ["p", "q"], ["a", "b"], {})
    result = compute_rewards(specs, ["p", "q"], ["a", "b"], {}, on_error=0.25)
    assert result.per_fn["odd"].tolist() == [0.0, 0.25]
    assert result.metrics["reward/odd/errors"] == 1


def test_wrong_length_is_an_error_or_falls_back_for_the_whole_batch():
    specs = [RewardSpec("short", lambda p, c, **k: [1.0])]
    with pytest.raises(RewardError, match="'short' returned 1 scores for 3 completions"):
        compute_rewards(specs, ["p"] * 3, ["a"] * 3, {})
    result = compute_rewards(specs, ["p"] * 3, ["a"] * 3, {}, on_error=0.0)
    assert result.per_fn["short"].tolist() == [0.0, 0.0, 0.0]
    assert result.metrics["reward/short/errors"] == 3


def test_a_scalar_instead_of_a_list_is_an_error():
    with pytest.raises(RewardError, match="returned float, not a list of scores"):
        compute_rewards([RewardSpec("scalar", lambda p, c, **k: 1.0)], ["p"], ["a"], {})


def test_tensor_and_bool_scores_are_accepted():
    specs = [
        RewardSpec("t", lambda p, c, **k: torch.tensor([0.5, 1.0])),
        RewardSpec("b", lambda p, c, **k: [True, False]),
    ]
    result = compute_rewards(specs, ["p", "q"], ["a", "b"], {})
    assert result.total.tolist() == [1.5, 1.0]


def test_a_failure_only_on_the_whole_batch_is_reported_as_such():
    def batch_only(prompts, completions, **kwargs):
        if len(completions) > 1:
            raise RuntimeError("batching bug")
        return [1.0]

    with pytest.raises(RewardError, match="on the batch of 2 completions but on no single one.*batching bug"):
        compute_rewards([RewardSpec("b", batch_only)], ["p", "q"], ["a", "b"], {})


def test_long_texts_are_shortened_in_error_messages():
    specs = [RewardSpec("fragile", failing_on_bad)]
    with pytest.raises(RewardError) as info:
        compute_rewards(specs, ["x" * 5000], ["bad"], {})
    assert "(5000 chars)" in str(info.value) and len(str(info.value)) < 1500


def test_misaligned_inputs_and_bad_settings_are_rejected():
    specs = [RewardSpec("one", constant(1.0))]
    with pytest.raises(ValueError, match="field 'answer' has 1 values but there are 2 completions"):
        compute_rewards(specs, ["p", "q"], ["a", "b"], {"answer": ["1"]})
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        compute_rewards(specs, ["p", "q"], ["a"], {})
    for bad in ("ignore", math.nan, True):
        with pytest.raises(ValueError, match="on_error must be 'raise' or a finite number"):
            compute_rewards(specs, ["p"], ["a"], {}, on_error=bad)
    with pytest.raises(ValueError, match="no reward functions"):
        compute_rewards([], ["p"], ["a"], {})


def test_with_a_fallback_a_batch_only_failure_uses_one_by_one_scores_and_warns(caplog):
    def batch_only(prompts, completions, **kwargs):
        if len(completions) > 1:
            raise RuntimeError("batching bug")
        return [float(len(completions[0]))]

    result = compute_rewards([RewardSpec("b", batch_only)], ["p", "q"], ["a", "bcd"], {}, on_error=0.0)
    assert result.per_fn["b"].tolist() == [1.0, 3.0]
    assert "on no single one" in caplog.text


def test_reward_state_is_saved_by_name_and_restored():
    saved = [RewardSpec("count", SeenCount()), RewardSpec("length", length_reward)]
    assert reward_state(saved) == {}  # nothing kept yet, and plain functions keep nothing
    compute_rewards(saved, ["p"] * 3, ["a", "b", "c"], {})
    assert reward_state(saved) == {"count": {"seen": 3}}
    restored = [RewardSpec("count", SeenCount()), RewardSpec("length", length_reward)]
    load_reward_state(restored, reward_state(saved), "the checkpoint")
    assert compute_rewards(restored, ["p"], ["d"], {}).per_fn["count"].tolist() == [4.0]


def test_a_reward_with_state_but_none_saved_is_refused():
    """Restoring nothing would silently restart it; a reward whose state is still empty needs none."""
    load_reward_state([RewardSpec("count", SeenCount())], {}, "the checkpoint of step 2")
    started = SeenCount()
    started.seen = 5  # e.g. state a reward builds at construction
    with pytest.raises(
        RewardConfigError, match="reward 'count' keeps state .* the checkpoint of step 2 holds none"
    ):
        load_reward_state([RewardSpec("count", started)], {"other": {"seen": 1}}, "the checkpoint of step 2")


def test_scoring_inside_state_kept_leaves_each_reward_as_it_was():
    """Held-out evaluation scores with a reward's state but must not add to it; an empty state ({})
    is restored too, and it is restored when the scoring raises."""
    fresh, used = SeenCount(), SeenCount()
    specs = [RewardSpec("fresh", fresh), RewardSpec("used", used), RewardSpec("length", length_reward)]
    compute_rewards(specs[1:2], ["p"] * 2, ["a", "b"], {})
    with state_kept(specs):
        scored = compute_rewards(specs, ["p"] * 3, ["a", "b", "c"], {})
    assert scored.per_fn["used"].tolist() == [5.0] * 3  # the state was used
    assert (fresh.seen, used.seen) == (0, 2)

    def broken(prompts, completions, **fields):
        raise RuntimeError("scorer down")

    with pytest.raises(RewardError, match="scorer down"), state_kept(specs):
        compute_rewards([*specs, RewardSpec("broken", broken)], ["p"], ["a"], {})
    assert (fresh.seen, used.seen) == (0, 2)
