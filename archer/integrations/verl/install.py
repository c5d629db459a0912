"""Install Archer's worker loss into a verl trainer, through the actor workers' ``set_loss_fn``.

verl's actor worker group exposes ``set_loss_fn`` (a remote call to every rank, the route
verl itself uses for the critic's loss). :func:`install_archer_loss` resolves Archer's
AlgoConfig on the driver from the trainer's config (``actor_rollout_ref.actor.*`` and the
top-level ``archer`` section, see :mod:`archer.integrations.verl.settings`) and sends
``partial(archer_ppo_loss, config=<the actor config>, algo=<AlgoConfig>)`` to the actor
workers.
Works with any trainer holding ``.config`` and ``.actor_rollout_wg`` after its workers are
built (verl's v1 trainers after ``init()``, the legacy ``RayPPOTrainer`` after
``init_workers()``).
"""

from __future__ import annotations

from dataclasses import is_dataclass
from functools import partial
from typing import Any

from archer.config import AlgoConfig
from archer.integrations.verl.settings import LOSS_MODES, algo_config_from_verl, get_key, plain
from archer.integrations.verl.worker_loss import archer_ppo_loss
from archer.validation import ConfigError


def archer_loss_fn(actor: Any, archer: Any = None) -> tuple[partial, AlgoConfig]:
    """(worker loss function, its AlgoConfig) for verl's actor config ``actor`` (the
    ``actor_rollout_ref.actor`` DictConfig or an ActorConfig) and the ``archer`` section.

    The settings are resolved here, on the driver, so a bad one fails before any worker
    runs; the function carries them (``algo``) and a plain copy of the actor config
    (``config``, as ppo_loss gets its ActorConfig), both picklable for Ray."""
    if not get_key(actor, "calculate_entropy", False):
        raise ConfigError("Archer's loss splits tokens by entropy: set "
                          "actor_rollout_ref.actor.calculate_entropy=true")
    algo = algo_config_from_verl(actor, archer)
    config = actor if is_dataclass(actor) else plain(actor)
    return partial(archer_ppo_loss, config=config, algo=algo), algo


def install_archer_loss(trainer: Any) -> AlgoConfig:
    """Send Archer's worker loss to ``trainer.actor_rollout_wg`` (after its workers are
    built); returns the AlgoConfig it runs. Raises ConfigError when
    ``actor_rollout_ref.actor.policy_loss.loss_mode`` is not an Archer loss."""
    config = trainer.config
    actor = config.actor_rollout_ref.actor
    mode = actor.policy_loss.loss_mode
    if mode not in LOSS_MODES:
        raise ConfigError(f"the Archer trainer modes run Archer's losses; "
                          f"actor_rollout_ref.actor.policy_loss.loss_mode={mode!r} must be one "
                          f"of {sorted(LOSS_MODES)} (or use verl's own trainer_mode)")
    distillation = config.get("distillation", None)
    if distillation is not None and distillation.get("enabled", False):
        raise ConfigError("distillation.enabled=true runs verl's distillation loss, which "
                          "Archer's worker loss would replace; disable one of them")
    loss_fn, algo = archer_loss_fn(actor, config.get("archer", None))
    trainer.actor_rollout_wg.set_loss_fn(loss_fn)
    return algo
