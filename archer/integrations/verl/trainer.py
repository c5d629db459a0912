"""verl trainer modes ``archer_sync``, ``archer_colocate_async``, ``archer_separate_async``.

verl >= 0.9 (the v1 trainer, ``trainer.use_v1=true``, its default) picks its trainer class by
``trainer.v1.trainer_mode`` from a registry. These are verl's own trainers plus one step: their
``on_init_end`` hook (run once the worker groups exist) installs Archer's worker loss
(:func:`archer.integrations.verl.install.install_archer_loss`). The legacy v0 trainer
(``RayPPOTrainer``) has no registry: call ``install_archer_loss(trainer)`` after
``trainer.init_workers()`` in your own launcher.
"""

from __future__ import annotations

from verl.trainer.ppo.v1 import (
    PPOTrainerColocateAsync,
    PPOTrainerSeparateAsync,
    PPOTrainerSync,
    register_trainer,
)

from archer.config import AlgoConfig
from archer.integrations.verl.install import install_archer_loss


class ArcherLossMixin:
    """A verl v1 trainer whose actor runs Archer's worker loss (installed at init end)."""

    archer_algo: AlgoConfig | None = None

    def on_init_end(self):
        # the workers exist now; installed first, so a bad config stops before any weight sync
        self.archer_algo = install_archer_loss(self)
        super().on_init_end()


class ArcherPPOTrainerSync(ArcherLossMixin, PPOTrainerSync):
    """verl's ``sync`` trainer with Archer's worker loss."""


class ArcherPPOTrainerColocateAsync(ArcherLossMixin, PPOTrainerColocateAsync):
    """verl's ``colocate_async`` trainer with Archer's worker loss."""


class ArcherPPOTrainerSeparateAsync(ArcherLossMixin, PPOTrainerSeparateAsync):
    """verl's ``separate_async`` trainer with Archer's worker loss."""


TRAINER_MODES = {
    "archer_sync": ArcherPPOTrainerSync,
    "archer_colocate_async": ArcherPPOTrainerColocateAsync,
    "archer_separate_async": ArcherPPOTrainerSeparateAsync,
}


def register_trainers() -> list[str]:
    """Register the ``archer_*`` trainer modes with verl (idempotent); returns their names."""
    for name, cls in TRAINER_MODES.items():
        register_trainer(name)(cls)
    return list(TRAINER_MODES)
