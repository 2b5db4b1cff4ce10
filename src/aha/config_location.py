"""Where a config key was set, for error messages: its line in the YAML file, or the command line.

A message that names only the key leaves the user searching a long file; "FILE: line N: key: ..." sends
them to the line to fix.
"""

from __future__ import annotations

import re
from collections.abc import Collection

import yaml

# The dotted key a ConfigError message starts with ("algo.mu: ...", "rewards.weights[1]: ...").
_MESSAGE_KEY = re.compile(r"^([A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*)(?:\[\d+\])*: ")


def key_lines(node: yaml.Node | None, prefix: str = "") -> dict[str, int]:
    """The line (1-based) of each dotted key of a composed YAML document (`yaml.compose`)."""
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = f"{prefix}{key_node.value}" if isinstance(key_node, yaml.ScalarNode) else None
            if key is not None:
                lines[key] = key_node.start_mark.line + 1
                lines.update(key_lines(value_node, f"{key}."))
    return lines


def located(message: str, file_source: str, lines: dict[str, int], cli_keys: Collection[str]) -> str:
    """`message` ("key: what is wrong") prefixed with where its key was set: "FILE: line N: " for a value
    from the YAML file, " (from the command line)" appended for an override (`cli_keys`, the dotted keys
    given there); unchanged when it names no key or says where already."""
    match = _MESSAGE_KEY.match(message)
    if match is None or "(from " in message:
        return message
    parts = match.group(1).split(".")
    for n in range(len(parts), 0, -1):  # the key itself, else the section that holds it
        key = ".".join(parts[:n])
        if any(given == key or given.startswith(f"{key}.") for given in cli_keys):
            return f"{message} (from the command line)"
        if key in lines:
            return f"{file_source}: line {lines[key]}: {message}"
    return message
