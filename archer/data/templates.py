"""Prompt templates: turn a dataset record into the final prompt text for generation.

A template adds the task instruction to the problem; the model's chat template (when its
tokenizer has one) then wraps the messages, else a plain ``User: ...\\nAssistant:`` fallback.

>>> format_prompt({"prompt": "What is 2+3?"}, "plain_answer")
'User: What is 2+3?\\nReply with only the final number.\\nAssistant:'
"""

from __future__ import annotations

from collections.abc import Callable

from archer.registry import Registry

TEMPLATES: Registry[Callable[[str], str]] = Registry("prompt template")


@TEMPLATES.register("boxed_math")
def boxed_math(problem: str) -> str:
    return f"{problem}\nPlease reason step by step, and put your final answer within \\boxed{{}}."


@TEMPLATES.register("plain_answer")
def plain_answer(problem: str) -> str:
    return f"{problem}\nReply with only the final number."


@TEMPLATES.register("code")
def code(problem: str) -> str:
    return (
        f"{problem}\nWrite a correct and efficient Python 3 solution. Put the complete code "
        "in a single ```python code block at the end of your answer."
    )


@TEMPLATES.register("none")
def none(problem: str) -> str:
    """The problem as is (the record's text already carries its instruction)."""
    return problem


@TEMPLATES.register("expression")
def expression(problem: str) -> str:
    """The text after the problem's last colon: reasoning-gym's arithmetic questions read
    ``<instruction>: <expression>`` (``State the final answer to the following arithmetic
    problem: 1 - 5 - 2 =`` -> ``1 - 5 - 2 =``). A short prompt for tiny character-level
    models, whose cost grows with every character; text without a colon is kept whole."""
    head, sep, tail = problem.rpartition(":")
    return tail.strip() if sep and tail.strip() else problem


def build_messages(record: dict, template_name: str) -> list[dict[str, str]]:
    """Chat messages for ``record["prompt"]`` (a string, or messages whose last user turn
    gets the template's instruction)."""
    template = TEMPLATES.get(template_name)
    prompt = record["prompt"]
    if isinstance(prompt, str):
        return [{"role": "user", "content": template(prompt)}]
    messages = [dict(m) for m in prompt]
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    if not users:
        raise ValueError(f"prompt messages have no user turn: {prompt!r}")
    messages[users[-1]]["content"] = template(messages[users[-1]]["content"])
    return messages


def format_prompt(record: dict, template_name: str, tokenizer=None) -> str:
    """Final prompt text: the tokenizer's chat template with a generation prompt when it
    has one, otherwise ``System: ...\\nUser: ...\\nAssistant:`` plain text."""
    messages = build_messages(record, template_name)
    if tokenizer is not None and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return render_plain(messages)


def render_plain(messages: list[dict[str, str]]) -> str:
    roles = {"system": "System", "user": "User", "assistant": "Assistant"}
    lines = [f"{roles.get(m['role'], m['role'].title())}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nAssistant:"
