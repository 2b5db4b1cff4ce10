"""Conversational prompts: validation of message lists, chat-template rendering without a second BOS,
left padding, the system prompt, and GRPO / SFT runs on message prompts (a ChatML tiny model built here)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from aha.config import ConfigError, load_config
from aha.data.chat import ChatFormat, chat_format
from aha.data.prompts import DataError, PromptExample, load_prompt_file
from aha.models.loading import load_tokenizer
from aha.rollout.completions import tokenize_prompts
from aha.train.grpo import GRPORunConfig, run_grpo
from aha.train.sft import SFTRunConfig, run_sft

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
from chat_model import IM_END, IM_START, create_chatml_model  # noqa: E402

SYSTEM = "Answer with a number."


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory) -> Path:
    return create_chatml_model(tmp_path_factory.mktemp("chatml") / "model", seed=0)


@pytest.fixture(scope="module")
def tokenizer(chat_dir):
    return load_tokenizer(str(chat_dir))


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# --- loading and validation -------------------------------------------------------------------------


def test_message_list_prompts_load_with_their_source(tmp_path):
    path = _write_jsonl(tmp_path / "p.jsonl", [{"prompt": _user("1+2="), "answer": "3"}, {"prompt": "4+4="}])
    first, second = load_prompt_file(path)
    assert first.prompt == _user("1+2=") and first.fields == {"answer": "3"}
    assert first.source == f"{path}: line 1" and second.prompt == "4+4="


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        ([], "the message list is empty"),
        (["hi"], "message 1 must be an object, got str"),
        ([{"role": "user"}], 'message 1: "content" must be a string, got nothing'),
        (
            [{"role": "user", "content": "a"}, {"role": 3, "content": "b"}],
            'message 2: "role" must be a string, got int',
        ),
        ([{"role": " ", "content": "a"}], 'message 1: "role" is empty'),
        ({"role": "user"}, "must be a string, got dict"),
    ],
)
def test_bad_message_lists_name_file_line_and_field(tmp_path, prompt, message):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "ok"}\n\n' + json.dumps({"prompt": prompt}) + "\n")
    with pytest.raises(DataError) as err:
        load_prompt_file(path)
    assert f'{path}: line 3: field "prompt"' in str(err.value) and message in str(err.value)


# --- deciding and rendering ---------------------------------------------------------------------------


def test_rendered_ids_equal_the_templates_own_tokenisation_with_one_bos(tokenizer):
    """The trainer's path (render to text, tokenise without special tokens) gives exactly the ids of
    apply_chat_template(tokenize=True); the tokenizer's defaults would add a second BOS."""
    examples = [PromptExample(_user("12+3=")), PromptExample(_user("7*8="))]
    fmt = chat_format("auto", None, tokenizer, examples)
    assert fmt.render and not fmt.add_special_tokens
    texts = [ex.prompt for ex in fmt.apply(examples, tokenizer)]
    ids, mask = tokenize_prompts(tokenizer, texts, torch.device("cpu"), fmt.add_special_tokens)
    for row, ex in enumerate(examples):
        expected = tokenizer.apply_chat_template(ex.prompt, add_generation_prompt=True, tokenize=True)[
            "input_ids"
        ]
        assert ids[row][mask[row].bool()].tolist() == expected
        assert expected.count(tokenizer.bos_token_id) == 1
    doubled = tokenize_prompts(tokenizer, texts[-1:], torch.device("cpu"))[0]  # the tokenizer's defaults
    assert doubled[0].tolist() == [tokenizer.bos_token_id, *expected]  # what the trainers avoid
    # Left padding: the shorter prompt's padding comes first, the generation prompt ends every row.
    assert mask[1].tolist() == [0] * (mask.shape[1] - int(mask[1].sum())) + [1] * int(mask[1].sum())
    assert ids[:, -1].tolist() == [tokenizer.convert_tokens_to_ids("\n")] * 2


def test_system_prompt_is_prepended_and_plain_strings_render_as_user_turns_with_always(tokenizer):
    examples = [PromptExample("5+5=")]
    fmt = chat_format("always", SYSTEM, tokenizer, examples)
    (rendered,) = fmt.apply(examples, tokenizer)
    assert rendered.prompt == (
        f"<s>{IM_START}system\n{SYSTEM}{IM_END}\n{IM_START}user\n5+5={IM_END}\n{IM_START}assistant\n"
    )
    assert examples[0].prompt == "5+5="  # the loaded examples are not modified


def test_auto_leaves_plain_strings_as_written(tokenizer):
    fmt = chat_format("auto", None, tokenizer, [PromptExample("5+5=")])
    assert fmt == ChatFormat(render=False) and fmt.add_special_tokens
    assert fmt.apply([PromptExample("5+5=")], tokenizer)[0].prompt == "5+5="


def test_contradictions_are_config_errors_naming_the_option_and_record(tokenizer, tiny_model_dir):
    chat, text = (
        PromptExample(_user("a"), source="f.jsonl: line 2"),
        PromptExample("b", source="f.jsonl: line 5"),
    )
    with pytest.raises(ConfigError, match=r"chat_template=never, but f.jsonl: line 2 has a message-list"):
        chat_format("never", None, tokenizer, [chat])
    with pytest.raises(
        ConfigError, match=r"mix message lists \(f.jsonl: line 2\) and plain strings \(f.jsonl: line 5\)"
    ):
        chat_format("auto", None, tokenizer, [chat, text])
    with pytest.raises(ConfigError, match="system_prompt needs chat-rendered prompts"):
        chat_format("auto", SYSTEM, tokenizer, [text])
    with_system = PromptExample([{"role": "system", "content": "x"}, *_user("a")], source="f.jsonl: line 7")
    with pytest.raises(ConfigError, match="f.jsonl: line 7 already starts with a system message"):
        chat_format("auto", SYSTEM, tokenizer, [with_system])
    plain_tokenizer = load_tokenizer(str(tiny_model_dir))  # the character tokenizer: no chat template
    with pytest.raises(ConfigError, match="no chat template, but f.jsonl: line 2 is a message list"):
        chat_format("auto", None, plain_tokenizer, [chat])
    with pytest.raises(ConfigError, match="no chat template, but data.chat_template=always"):
        chat_format("always", None, plain_tokenizer, [text])


# --- trainers ----------------------------------------------------------------------------------------


def test_grpo_step_runs_on_message_prompts_and_rewards_see_the_rendered_text(chat_dir, tmp_path):
    records = [{"prompt": _user(f"{a}+{a}="), "answer": str(2 * a)} for a in range(8)]
    train = _write_jsonl(tmp_path / "train.jsonl", records)
    cfg = load_config(
        GRPORunConfig,
        overrides=[
            f"model.path={chat_dir}",
            f"data.train_file={train}",
            f"data.eval_file={train}",
            f"data.system_prompt={SYSTEM}",
            f"run.output_dir={tmp_path / 'run'}",
            "run.progress=false",
            "rewards.functions=[toy_rewards:digit_fraction]",
            "rollout.max_new_tokens=4",
            "rollout.group_size=2",
            "train.prompts_per_step=2",
            "train.steps=1",
            "eval.num_prompts=2",
            "track.sample_every=1",
            "track.plot=false",
        ],
    )
    result = run_grpo(cfg)
    assert [row["step"] for row in result.history] == [0, 1]
    rows = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    prompts = {row["prompt"] for row in rows}
    assert prompts and all(
        p.startswith(f"<s>{IM_START}system\n{SYSTEM}{IM_END}\n{IM_START}user\n") for p in prompts
    )
    assert (tmp_path / "run" / "checkpoints").is_dir()


def test_grpo_learns_through_chat_rendered_prompts(chat_dir, tmp_path):
    """The tiny ChatML model, prompted with message lists, learns a learnable reward (digit characters)."""
    records = [{"prompt": _user(f"{a}+{b}=")} for a in range(10) for b in range(4)]
    train = _write_jsonl(tmp_path / "train.jsonl", records)
    cfg = load_config(
        GRPORunConfig,
        overrides=[
            f"model.path={chat_dir}",
            f"data.train_file={train}",
            f"data.eval_file={train}",
            f"run.output_dir={tmp_path / 'run'}",
            "run.progress=false",
            "rewards.functions=[toy_rewards:digit_fraction]",
            "rollout.max_new_tokens=8",
            "rollout.group_size=8",
            "train.prompts_per_step=8",
            "train.steps=20",
            "optim.lr=3e-3",
            "algo.beta=0.01",
            "eval.num_prompts=16",
            "eval.every=0",
            "track.sample_every=0",
            "track.plot=false",
        ],
    )
    rewards = [row["reward/mean"] for row in run_grpo(cfg).history if "reward/mean" in row]
    first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
    assert first < 0.3, f"the random model already scores {first:.2f}; the test would prove nothing"
    assert last > first + 0.3, f"mean reward went from {first:.2f} to {last:.2f}"


def test_sft_renders_prompts_like_grpo(chat_dir, tokenizer, tmp_path, monkeypatch):
    """SFT's prompt tokens are the chat template's own (one BOS), so SFT and RL see the same prefix."""
    import aha.train.sft as sft

    records = [{"prompt": _user(f"{a}+1="), "completion": str(a + 1)} for a in range(4)]
    train = _write_jsonl(tmp_path / "sft.jsonl", records)
    encoded = []

    def recording_encode(*args, **kwargs):
        encoded.extend(original(*args, **kwargs))
        return encoded

    original = sft.encode_demonstrations
    monkeypatch.setattr(sft, "encode_demonstrations", recording_encode)
    cfg = load_config(
        SFTRunConfig,
        overrides=[
            f"model.path={chat_dir}",
            f"data.train_file={train}",
            f"data.system_prompt={SYSTEM}",
            f"run.output_dir={tmp_path / 'sft'}",
            "run.progress=false",
            "train.steps=1",
            "train.batch_size=4",
            "optim.warmup_steps=0",
        ],
    )
    run_sft(cfg)
    assert len(encoded) == len(records)
    for row, record in zip(encoded, records, strict=True):
        messages = [{"role": "system", "content": SYSTEM}, *record["prompt"]]
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)[
            "input_ids"
        ]
        completion = tokenizer(record["completion"], add_special_tokens=False)["input_ids"]
        assert row.input_ids == prompt + completion + [tokenizer.eos_token_id]
        assert row.prompt_len == len(prompt)
