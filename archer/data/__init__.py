"""Prompt datasets (offline files, reasoning-gym) and prompt templates.

Importing this package registers the ``reasoning_gym`` reward in ``archer.rewards``.
"""

from archer.data.datasets import (
    FILES,
    DataFormatError,
    FileSpec,
    PromptDataset,
    extract_answer,
    gym_reward,
    load_dataset,
    load_file,
    load_reasoning_gym,
    split_train_val,
)
from archer.data.templates import TEMPLATES, build_messages, format_prompt

__all__ = [
    "FILES",
    "TEMPLATES",
    "DataFormatError",
    "FileSpec",
    "PromptDataset",
    "build_messages",
    "extract_answer",
    "format_prompt",
    "gym_reward",
    "load_dataset",
    "load_file",
    "load_reasoning_gym",
    "split_train_val",
]
