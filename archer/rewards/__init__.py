"""Graders shared by training (rewards) and evaluation (scores).

Reward contract (as TRL): ``fn(completions, **columns) -> list[float | None]`` where
``completions`` is a list of strings and each column is a list aligned with it; ``None``
means "this reward does not apply to that sample".
"""

from archer.registry import Registry

REWARDS: Registry = Registry("reward function")


def register_reward(name: str):
    """Decorator: ``@register_reward("math")`` makes a reward selectable by name."""
    return REWARDS.register(name)


def get_reward(name: str):
    return REWARDS.get(name)
