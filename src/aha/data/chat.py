"""Chat-formatted prompts: render conversations with the tokenizer's chat template, once, before training.

A prompt is a string or a list of {"role", "content"} messages. `data.chat_template` decides whether
the run renders prompts with `tokenizer.apply_chat_template(..., add_generation_prompt=True)`:

- "auto" (default): render when the prompts are message lists; plain strings are used as written
  (text completion, or files already rendered by a preprocessing script). A run whose prompts mix
  both is refused: set "always" to render the strings as single user turns too.
- "always": render every prompt; a plain string becomes one user message.
- "never": use prompts as written; a message-list prompt is an error.

`data.system_prompt` is prepended as a system message to every rendered prompt. Rendered text already
holds the template's special tokens (a BOS, if the template writes one), so it must be tokenised with
`add_special_tokens=False`, or the tokenizer would add a second BOS; `ChatFormat.add_special_tokens`
says which applies and the trainers pass it on to the rollout engine and the SFT encoder.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from aha.config import ConfigError
from aha.data.prompts import Messages, PromptExample

CHAT_TEMPLATE_MODES = ("auto", "always", "never")
CHAT_TEMPLATE_HELP = (
    "Render prompts with the tokenizer's chat template (with the assistant's generation prompt): "
    "'auto' = message-list prompts are rendered, plain strings are used as written; 'always' = plain "
    "strings too, as one user message; 'never' = never (message lists are then an error)."
)
SYSTEM_PROMPT_HELP = (
    "System message prepended to every chat-rendered prompt (needs chat rendering: message-list "
    "prompts, or chat_template=always). None = the template's own default, if it has one."
)


@dataclass(frozen=True)
class ChatFormat:
    """How a run turns its prompts into model input text."""

    render: bool  # apply the chat template
    system_prompt: str | None = None

    @property
    def add_special_tokens(self) -> bool:
        """Whether tokenising the prompt text should add the tokenizer's special tokens (BOS...)."""
        return not self.render

    def messages(self, prompt: str | Messages) -> Messages:
        """The conversation `prompt` stands for, system prompt first when one is set."""
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        if self.system_prompt is not None:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return messages

    def text(self, prompt: str | Messages, tokenizer: Any) -> str:
        """The model's input text for `prompt`: as written, or rendered with the generation prompt."""
        if not self.render:
            if not isinstance(prompt, str):
                raise ValueError("a message-list prompt needs chat rendering (see chat_format)")
            return prompt
        return tokenizer.apply_chat_template(
            self.messages(prompt), add_generation_prompt=True, tokenize=False
        )

    def apply(self, examples: list[PromptExample], tokenizer: Any) -> list[PromptExample]:
        """Copies of `examples` whose prompts are the model's input text (fields and source kept)."""
        return [replace(ex, prompt=self.text(ex.prompt, tokenizer)) for ex in examples]


def chat_format(
    mode: str, system_prompt: str | None, tokenizer: Any, examples: list[PromptExample]
) -> ChatFormat:
    """Decide, for all of a run's prompts at once, whether they are rendered; a contradiction between
    the options, the prompts and the tokenizer is a ConfigError naming the option and a record."""
    if mode not in CHAT_TEMPLATE_MODES:
        raise ConfigError(f"data.chat_template={mode!r} is not one of {list(CHAT_TEMPLATE_MODES)}")
    first_text = next((ex for ex in examples if isinstance(ex.prompt, str)), None)
    first_chat = next((ex for ex in examples if not isinstance(ex.prompt, str)), None)
    if mode == "never" and first_chat is not None:
        raise ConfigError(
            f"data.chat_template=never, but {_where(first_chat)} has a message-list prompt; "
            "set data.chat_template=auto to render it with the tokenizer's chat template"
        )
    if mode == "auto" and first_chat is not None and first_text is not None:
        raise ConfigError(
            f"data.chat_template=auto, but the prompts mix message lists ({_where(first_chat)}) and plain "
            f"strings ({_where(first_text)}); set data.chat_template=always to render the strings as user "
            "messages, or make the prompts all one kind"
        )
    render = mode == "always" or (mode == "auto" and first_chat is not None)
    if render and not getattr(tokenizer, "chat_template", None):
        because = (
            "data.chat_template=always" if mode == "always" else f"{_where(first_chat)} is a message list"
        )
        raise ConfigError(
            f"the tokenizer ({getattr(tokenizer, 'name_or_path', '')!r}) has no chat template, but {because}; "
            "use a model whose tokenizer has one, or plain-string prompts with data.chat_template=auto"
        )
    if system_prompt is not None:
        if not render:
            raise ConfigError(
                "data.system_prompt needs chat-rendered prompts, and these are plain strings used as written; "
                "set data.chat_template=always (or unset data.system_prompt)"
            )
        has_system = next(
            (ex for ex in examples if not isinstance(ex.prompt, str) and ex.prompt[0]["role"] == "system"),
            None,
        )
        if has_system is not None:
            raise ConfigError(
                f"data.system_prompt is set, but {_where(has_system)} already starts with a system message; "
                "unset data.system_prompt or remove the record's system message"
            )
    return ChatFormat(render=render, system_prompt=system_prompt)


def _where(example: PromptExample | None) -> str:
    return (example.source or "a prompt") if example is not None else "a prompt"
