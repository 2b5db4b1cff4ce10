"""The demo's scenarios: which task, which teacher, and the budgets measured to show the effect quickly.

A scenario fixes what the demo is about (task and teacher); the budgets are defaults the user can
override from the command line (`aha demo scenario=cot grpo.steps=200`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

from aha.demo.tasks import (
    AdditionProblem,
    CarryForgettingTeacher,
    ParityProblem,
    ScratchpadTeacher,
    split_parity_problems,
    split_problems,
)

Teacher = CarryForgettingTeacher | ScratchpadTeacher
Problem = AdditionProblem | ParityProblem
# (n_heldout, n_train, seed) -> disjoint (train, held-out) problems
Splitter = Callable[[int, int | None, int], tuple[list[Problem], list[Problem]]]


@dataclass(frozen=True)
class Budget:
    """Steps and sizes of one demo run (a scenario has a full and a quick one)."""

    sft_steps: int
    grpo_steps: int
    heldout_size: int  # problems in the final accuracy table
    grpo_eval_size: int  # held-out problems evaluated (greedy) during GRPO
    grpo_eval_every: int


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    split: Splitter
    teacher: Teacher
    max_new_tokens: int
    hidden_size: int  # the tiny model's width and MLP width (measured to make the lesson visible)
    intermediate_size: int
    train_problems: int | None  # None: every problem not held out (2-digit additions are few)
    demos_per_problem: int  # teacher demonstrations drawn per training problem
    full: Budget
    quick: Budget
    threads: int = 0  # torch threads unless `threads=` says (0: torch's default)


CARRY = Scenario(
    name="carry",
    summary="2-digit addition; the teacher forgets the carry 3 times in 4. RL goes past its teacher.",
    split=partial(split_problems, 2),
    teacher=CarryForgettingTeacher(forget_prob=0.75),
    max_new_tokens=6,
    hidden_size=128,
    intermediate_size=512,
    train_problems=None,
    demos_per_problem=4,
    full=Budget(sft_steps=1400, grpo_steps=60, heldout_size=500, grpo_eval_size=200, grpo_eval_every=10),
    # 80 GRPO steps, not 40: from the quick SFT model (not yet converged) the climb varies a lot with the
    # sampled trajectory; over seeds 0-2 40 steps gained 17-28 points, 80 steps 24-38 (docs/demo.md).
    quick=Budget(sft_steps=800, grpo_steps=80, heldout_size=200, grpo_eval_size=100, grpo_eval_every=10),
)

N_BITS = 16  # cot: bits per parity problem

SCENARIOS: dict[str, Scenario] = {
    "carry": CARRY,
    "limit": replace(
        CARRY,
        name="limit",
        summary="As 'carry', but the teacher always forgets the carry: RL cannot find what is never sampled.",
        teacher=CarryForgettingTeacher(forget_prob=1.0),
    ),
    "cot": Scenario(
        name="cot",
        summary="Parity of 16 bits; the teacher shows its working (the running parity) 1 time in 4. "
        "The direct answer is out of the tiny model's reach, the working is not: with a correctness "
        "reward alone RL makes the model write its working (think longer).",
        split=partial(split_parity_problems, N_BITS),
        teacher=ScratchpadTeacher(scratchpad_prob=0.25),
        max_new_tokens=N_BITS + 3,  # "[" + one state per bit (the last is the answer) + "]" + EOS
        hidden_size=96,
        intermediate_size=256,
        train_problems=20_000,
        demos_per_problem=1,
        full=Budget(sft_steps=300, grpo_steps=60, heldout_size=500, grpo_eval_size=200, grpo_eval_every=5),
        # SFT's loss reaches its floor (the working learned, the direct answers at chance) in ~150 steps.
        quick=Budget(sft_steps=200, grpo_steps=30, heldout_size=200, grpo_eval_size=100, grpo_eval_every=10),
        # One thread: on the shared 2-core machine, under load average ~4, an SFT step took 3 s with
        # torch's two threads spinning against each other and 0.13 s with one.
        threads=1,
    ),
}


@dataclass
class TaskFiles:
    """The JSONL files one demo run trains and evaluates on (written under run_dir/data/)."""

    sft: Path  # teacher demonstrations on training problems: prompt, completion, answer
    grpo_train: Path  # training problems: prompt, answer
    heldout: Path  # problems never trained on: prompt, answer
    heldout_problems: list[Problem]


def write_task_files(scenario: Scenario, out_dir: Path, heldout_size: int, seed: int) -> TaskFiles:
    """Draw disjoint training and held-out problems and write the demonstrations and prompt files.

    Each training problem gets `demos_per_problem` independent teacher demonstrations, so SFT sees the
    teacher's mistakes and its occasional right answers in the teacher's proportions rather than one
    fixed (memorisable) draw per problem.
    """
    train, heldout = scenario.split(heldout_size, scenario.train_problems, seed)
    rng = random.Random(seed + 1)
    out_dir.mkdir(parents=True, exist_ok=True)
    files = TaskFiles(out_dir / "sft.jsonl", out_dir / "grpo_train.jsonl", out_dir / "heldout.jsonl", heldout)
    _write_jsonl(
        files.sft,
        [
            {"prompt": p.prompt, "completion": scenario.teacher.complete(p, rng), "answer": p.answer}
            for p in train
            for _ in range(scenario.demos_per_problem)
        ],
    )
    _write_jsonl(files.grpo_train, [{"prompt": p.prompt, "answer": p.answer} for p in train])
    _write_jsonl(files.heldout, [{"prompt": p.prompt, "answer": p.answer} for p in heldout])
    return files


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
