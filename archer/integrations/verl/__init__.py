"""Archer's losses in verl: ``actor_rollout_ref.actor.policy_loss.loss_mode=archer`` (or ``aspo``).

Importing this module registers, with verl (tested with verl 0.9.1):

- the policy-loss names ``archer`` and ``aspo`` (:mod:`.policy_loss`; called by verl's
  default worker loss they refuse loudly: a registered policy loss gets no entropy and no
  reference log-probs);
- the trainer modes ``archer_sync``, ``archer_colocate_async``, ``archer_separate_async``
  (:mod:`.trainer`, verl's v1 trainers), which install Archer's worker loss
  (:func:`.worker_loss.archer_ppo_loss`): the entropy split, per-class clip and per-class KL,
  computed by the SAME ``archer.algos.policy_loss.compute_policy_loss`` as Archer's trainer.

verl imports this module itself, in the driver and in every Ray worker, through the
``verl.plugins`` entry point that archer-rlvr declares (``import verl`` loads every entry point
of that group unless ``VERL_USE_EXTERNAL_PLUGINS=none``); ``VERL_USE_EXTERNAL_MODULES=
archer.integrations.verl`` does the same without the entry point.
"""

from __future__ import annotations

import logging

from archer.integrations.verl.install import archer_loss_fn, install_archer_loss
from archer.integrations.verl.policy_loss import (
    NeedsArcherWorkerLoss,
    register_policy_losses,
)
from archer.integrations.verl.settings import LOSS_MODES, algo_config_from_verl
from archer.integrations.verl.worker_loss import archer_ppo_loss

logger = logging.getLogger(__name__)

POLICY_LOSS_NAMES = register_policy_losses()

try:  # the v1 trainer registry (verl >= 0.9); absent or unimportable: losses only
    from archer.integrations.verl.trainer import register_trainers

    TRAINER_MODES = register_trainers()
except ImportError as exc:  # pragma: no cover - depends on the installed verl
    logger.warning("archer: verl's v1 trainers are not importable (%s); the archer_* trainer "
                   "modes are not registered", exc)
    TRAINER_MODES = []

__all__ = [
    "LOSS_MODES", "POLICY_LOSS_NAMES", "TRAINER_MODES", "NeedsArcherWorkerLoss",
    "algo_config_from_verl", "archer_loss_fn", "archer_ppo_loss", "install_archer_loss",
]
