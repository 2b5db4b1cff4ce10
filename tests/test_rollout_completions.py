"""Helpers shared by the rollout engines: stop-string cuts, positions under left padding, EOS ids, checks."""

from __future__ import annotations

import pytest
import torch

from aha.models.loading import load_model, load_tokenizer
from aha.models.positions import left_padded_position_ids
from aha.rollout.base import SamplingParams
from aha.rollout.completions import (
    StopStringFinder,
    check_sampling_params,
    eos_token_ids,
    tokenize_prompts,
)


def test_cut_text_ends_right_after_the_earliest_stop_string():
    finder = StopStringFinder(tokenizer=None, stop_strings=("</answer>", "\n\n"))
    assert finder.cut_text("x</answer>\n\nmore") == "x</answer>"  # a token may run past the stop string
    assert finder.cut_text("a\n\nb</answer>") == "a\n\n"
    assert finder.cut_text("no stop here") == "no stop here"


def test_stop_finder_sees_stop_strings_split_over_tokens(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    finder = StopStringFinder(tokenizer, ("ab",))
    ids = torch.tensor([tokenizer.encode("xxab"), tokenizer.encode("abxx")])
    assert [finder.rows_ending_here(ids, [0, 1], step) for step in range(4)] == [
        [False, False],
        [False, True],
        [False, True],
        [True, True],
    ]


def test_left_padded_positions_count_real_tokens_only():
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert left_padded_position_ids(mask).tolist() == [[1, 1, 0, 1, 2], [0, 1, 2, 3, 4]]


def test_tokenize_prompts_left_pads_with_tokenizer_defaults(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    ids, mask = tokenize_prompts(tokenizer, ["abc", "a"], torch.device("cpu"))
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert ids[1, :2].tolist() == [tokenizer.pad_token_id] * 2
    assert ids[0].tolist() == tokenizer("abc")["input_ids"]


def test_eos_ids_join_tokenizer_and_generation_config(tiny_model_dir):
    model, tokenizer = load_model(str(tiny_model_dir)), load_tokenizer(str(tiny_model_dir))
    assert eos_token_ids(model, tokenizer) == [tokenizer.eos_token_id]
    model.generation_config.eos_token_id = [7, tokenizer.eos_token_id]
    assert eos_token_ids(model, tokenizer) == sorted({7, tokenizer.eos_token_id})


@pytest.mark.parametrize(
    "params, field",
    [
        (SamplingParams(max_new_tokens=0), "max_new_tokens"),
        (SamplingParams(max_new_tokens=3, min_new_tokens=4), "min_new_tokens"),
        (SamplingParams(temperature=-1), "temperature"),
        (SamplingParams(top_p=1.5), "top_p"),
        (SamplingParams(top_k=-1), "top_k"),
        (SamplingParams(stop_strings=("",)), "stop_strings"),
    ],
)
def test_bad_sampling_params_name_the_field(params, field):
    with pytest.raises(ValueError, match=field):
        check_sampling_params(params)


def test_first_stop_length_is_the_shortest_prefix_with_a_stop_string(tiny_model_dir):
    tokenizer = load_tokenizer(str(tiny_model_dir))
    finder = StopStringFinder(tokenizer, ("ab", "zz"))
    assert finder.first_stop_length(tokenizer.encode("xxabyyzz")) == 4
    assert finder.first_stop_length(tokenizer.encode("zz")) == 2
    assert finder.first_stop_length(tokenizer.encode("xaxbx")) is None
