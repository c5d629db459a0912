"""The names ``archer`` and ``aspo`` in verl's policy-loss registry.

A function registered with ``verl.trainer.ppo.core_algos.register_policy_loss`` is called by
verl's default worker loss (``ppo_loss``) with the log-probs, advantages and mask only: no
token entropy, so no entropy split, and no reference log-probs, so no per-class KL (verl adds
its own KL outside, one coefficient for all tokens). Neither Archer's dual-token clip nor
ASPO's per-class bounds can be expressed there. The registered functions therefore REFUSE
loudly, saying how to run the real loss: Archer's worker loss
(:mod:`archer.integrations.verl.worker_loss`), installed by the ``archer_*`` trainer modes
(:mod:`archer.integrations.verl.trainer`). Registering the names still matters: verl's config
check accepts ``loss_mode=archer``, and a run that forgot the trainer mode stops at its first
update with that explanation instead of an "Unsupported loss mode" or, worse, a silently
different loss.
"""

from __future__ import annotations

import logging

from archer.integrations.verl.settings import LOSS_MODES
from archer.validation import ConfigError

logger = logging.getLogger(__name__)


class NeedsArcherWorkerLoss(ConfigError):
    """verl called the registered policy loss directly: Archer's worker loss is not installed."""


def _refusing_loss(mode: str):
    def policy_loss(old_log_prob=None, log_prob=None, advantages=None, response_mask=None,
                    loss_agg_mode="token-mean", config=None, rollout_is_weights=None):
        raise NeedsArcherWorkerLoss(
            f"actor_rollout_ref.actor.policy_loss.loss_mode={mode} reached verl's default "
            "worker loss, which gives a policy loss no token entropy and no reference "
            "log-probs, so Archer's entropy split and per-class KL cannot run there. Run "
            f"with trainer.v1.trainer_mode=archer_sync (or archer_colocate_async / "
            "archer_separate_async) and actor_rollout_ref.actor.calculate_entropy=true: "
            "those trainers install Archer's worker loss (archer.integrations.verl)."
        )

    policy_loss.__name__ = f"{mode}_policy_loss"
    policy_loss.__qualname__ = policy_loss.__name__
    policy_loss.archer_loss = LOSS_MODES[mode]  # which Archer loss the name stands for
    return policy_loss


REGISTERED = {mode: _refusing_loss(mode) for mode in LOSS_MODES}


def register_policy_losses() -> list[str]:
    """Put ``archer`` and ``aspo`` into verl's policy-loss registry; returns the names added.
    A name that verl (or another plugin) already uses for a different loss is left alone and
    logged as a warning: ours would otherwise shadow it."""
    from verl.trainer.ppo.core_algos import POLICY_LOSS_REGISTRY, register_policy_loss

    added = []
    for mode, fn in REGISTERED.items():
        existing = POLICY_LOSS_REGISTRY.get(mode)
        if existing is not None and existing is not fn:
            logger.warning("verl already has a policy loss %r (%s); Archer's is not "
                           "registered under that name", mode, getattr(existing, "__name__", ""))
            continue
        register_policy_loss(mode)(fn)
        added.append(mode)
    return added
