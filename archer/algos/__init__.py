"""Pure tensor functions of the algorithm, each chosen by name through a small registry."""

from archer.algos.advantages import (
    ADVANTAGES,
    compute_advantages,
    lopti_reweight,
    nonuniform_group_mask,
    overlong_penalty,
)
from archer.algos.aggregate import AGGREGATIONS, aggregate
from archer.algos.aspo import aspo_loss  # importing it registers "aspo" in POLICY_LOSSES
from archer.algos.entropy import entropy_naive, token_entropy, token_logprobs
from archer.algos.kl import KL_ESTIMATORS, kl_penalty
from archer.algos.policy_loss import (
    POLICY_LOSSES,
    NonFiniteLogprobError,
    compute_policy_loss,
    dual_token_clip_loss,
)
from archer.algos.schedule import Phase, build_update_plan, phase_token_mask
from archer.algos.split import NonFiniteEntropyError, TokenSplit, split_by_entropy
from archer.algos.types import LossInputs, LossOutput

__all__ = [
    "ADVANTAGES", "AGGREGATIONS", "KL_ESTIMATORS", "POLICY_LOSSES", "LossInputs", "LossOutput",
    "NonFiniteEntropyError", "NonFiniteLogprobError", "Phase", "TokenSplit", "aggregate",
    "aspo_loss", "build_update_plan", "compute_advantages", "compute_policy_loss",
    "dual_token_clip_loss",
    "entropy_naive", "kl_penalty", "lopti_reweight", "nonuniform_group_mask", "overlong_penalty",
    "phase_token_mask", "split_by_entropy", "token_entropy", "token_logprobs",
]
