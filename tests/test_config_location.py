from __future__ import annotations

import yaml

from aha.config_location import key_lines, located

YAML = "model:\n  path: gpt2\n\ntrain:\n  steps: 5\n  lr: abc\nlist: [1, 2]\n"


def test_every_dotted_key_gets_its_one_based_line():
    assert key_lines(yaml.compose(YAML)) == {
        "model": 1,
        "model.path": 2,
        "train": 4,
        "train.steps": 5,
        "train.lr": 6,
        "list": 7,
    }
    assert key_lines(yaml.compose("")) == {}  # an empty file composes to no node
    assert key_lines(yaml.compose("[1, 2]")) == {}  # not a mapping: no keys


def test_a_message_is_located_at_its_key_else_at_the_section_that_holds_it():
    lines = key_lines(yaml.compose(YAML))
    assert located("train.lr: bad", "run.yaml", lines, ()) == "run.yaml: line 6: train.lr: bad"
    assert located("train.warmup: bad", "run.yaml", lines, ()) == "run.yaml: line 4: train.warmup: bad"
    assert located("list[1]: bad", "run.yaml", lines, ()) == "run.yaml: line 7: list[1]: bad"


def test_a_key_given_on_the_command_line_says_so_over_its_file_line():
    lines = key_lines(yaml.compose(YAML))
    assert (
        located("train.lr: bad", "run.yaml", lines, ["train.lr"]) == "train.lr: bad (from the command line)"
    )
    # An override inside the section counts for a message about the section.
    assert located("train: bad", "run.yaml", lines, ["train.steps"]) == "train: bad (from the command line)"


def test_a_message_without_a_key_or_already_located_is_left_alone():
    lines = key_lines(yaml.compose(YAML))
    assert located("no key here", "run.yaml", lines, ["train.lr"]) == "no key here"
    said = "train.lr: bad (from the command line)"
    assert located(said, "run.yaml", lines, ()) == said
    assert located("other.key: bad", "run.yaml", lines, ()) == "other.key: bad"
