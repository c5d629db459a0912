"""Generation backends behind one interface (``RolloutBackend``): ``hf`` and ``vllm``.

``VLLMRollout`` lives in :mod:`archer.rollout.vllm` (imports vLLM only when constructed).
"""

from archer.rollout.base import RolloutBackend, SamplingParams
from archer.rollout.hf import HFRollout

__all__ = ["HFRollout", "RolloutBackend", "SamplingParams"]
