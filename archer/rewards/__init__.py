"""Graders shared by training (rewards) and evaluation (scores).

Reward contract (as TRL): ``fn(completions, **columns) -> list[float | None]`` where
``completions`` is a list of strings and each column is a list aligned with it; ``None``
means "this reward does not apply to that sample".

Built-in rewards live in modules that are imported on first use, so ``import archer`` stays
cheap: ``math`` (archer.rewards.math), ``code`` (archer.rewards.code, sandboxed) and
``reasoning_gym`` (archer.data.datasets).
"""

import importlib

from archer.registry import Registry

REWARDS: Registry = Registry("reward function")

BUILTIN_REWARD_MODULES = {
    "math": "archer.rewards.math",
    "code": "archer.rewards.code",
    "reasoning_gym": "archer.data.datasets",
}


def register_reward(name: str):
    """Decorator: ``@register_reward("math")`` makes a reward selectable by name."""
    return REWARDS.register(name)


def get_reward(name: str):
    """The reward function registered under ``name`` (importing built-ins on demand)."""
    if name not in REWARDS and name in BUILTIN_REWARD_MODULES:
        importlib.import_module(BUILTIN_REWARD_MODULES[name])
    if name not in REWARDS:
        raise KeyError(
            f"unknown reward function {name!r}; choose one of "
            f"{sorted(set(REWARDS.names()) | set(BUILTIN_REWARD_MODULES))}"
        )
    return REWARDS.get(name)
