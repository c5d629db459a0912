"""Generation backends behind one interface (``RolloutBackend``): ``hf`` now, ``vllm`` later."""

from archer.rollout.base import RolloutBackend, SamplingParams
from archer.rollout.hf import HFRollout

__all__ = ["HFRollout", "RolloutBackend", "SamplingParams"]
