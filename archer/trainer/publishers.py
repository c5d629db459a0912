"""How asynchronous rollouts (``max_staleness >= 1``) get the trainer's policy versions to the
rollout worker: the transport behind :class:`archer.trainer.pipeline.RolloutPipeline`
(``rollout_weight_sync``).

- :class:`ObjectStorePublisher` (``object_store``, the HF default): each version's state dict
  (CPU tensors) is ``ray.put``; every request carries its version's object reference, and the
  worker fetches it when it holds another version.
- :class:`ChannelPublisher` (``collective``, the vLLM default): each version is snapshotted
  (CPU clones: training goes on changing the live parameters) and pushed over a
  :class:`~archer.rollout.weight_transfer.WeightChannel` (gloo on CPU, NCCL between GPUs).
  Before a generate request for a version the worker does not hold yet, the trainer submits
  ``worker.receive_weights.remote(version, layout)``; Ray runs one caller's calls to an actor
  in submission order, so the receive lands between the right generates, and a background
  sender thread sends the snapshots in that same order.

Both share one interface: :meth:`connect` a (new) worker, :meth:`publish` a version,
:meth:`weights_for` a request (the ``weights`` argument of ``worker.generate``),
:meth:`release_before` the versions no request needs any more, :meth:`close`.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any

import torch

from archer.train_config import TrainConfig

log = logging.getLogger(__name__)


def resolve_weight_sync(cfg: TrainConfig) -> str:
    """``rollout_weight_sync`` with ``auto`` resolved: ``collective`` for the vLLM worker,
    ``object_store`` for the HF one."""
    if cfg.rollout_weight_sync != "auto":
        return cfg.rollout_weight_sync
    return "collective" if cfg.rollout_backend == "vllm" else "object_store"


def channel_backend(cfg: TrainConfig, trainer_device: torch.device) -> str:
    """NCCL between a CUDA trainer and the vLLM worker's GPUs, gloo otherwise (the HF worker
    samples on CPU)."""
    return "nccl" if cfg.rollout_backend == "vllm" and trainer_device.type == "cuda" else "gloo"


def build_publisher(cfg: TrainConfig, trainer_device: torch.device):
    """The publisher ``cfg`` asks for (``rollout_weight_sync``)."""
    if resolve_weight_sync(cfg) == "object_store":
        return ObjectStorePublisher()
    receivers = cfg.vllm_tensor_parallel_size if cfg.rollout_backend == "vllm" else 1
    backend = channel_backend(cfg, trainer_device)
    return ChannelPublisher(backend, trainer_device if backend == "nccl" else "cpu", receivers)


class ObjectStorePublisher:
    """Versioned policy weights in Ray's object store (state dicts of CPU tensors); the
    versions a request in flight may still need are kept, older ones released."""

    def __init__(self) -> None:
        self.refs: dict[int, Any] = {}

    def connect(self, worker) -> None:
        """Nothing to set up: every request carries its weights' reference."""

    def publish(self, version: int, model) -> None:
        import ray

        self.refs[version] = ray.put({k: v.detach().cpu() for k, v in model.state_dict().items()})

    def weights_for(self, worker, version: int) -> list[Any]:
        return [self.refs[version]]

    def release_before(self, version: int) -> None:
        for v in [v for v in self.refs if v < version]:
            del self.refs[v]

    def close(self) -> None:
        self.refs.clear()


class ChannelSender:
    """Rank 0 of a weight channel and the thread that sends on it: :meth:`push` queues a
    snapshot, sent after every one queued before it."""

    def __init__(self, channel) -> None:
        self.channel = channel
        self.todo: queue.Queue = queue.Queue()
        self.error: BaseException | None = None  # the send that failed (the worker died?)
        self.discard = threading.Event()  # set: drop what is still queued (a dead worker)
        self.thread = threading.Thread(target=self._run, name="archer-weight-sender",
                                       daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (state := self.todo.get()) is not None:
            if self.discard.is_set():
                continue
            try:
                self.channel.send(state)
            except Exception as err:  # noqa: BLE001 - the receiving worker is gone
                self.error = err
                log.warning("sending weights to the rollout worker failed: %s", err)
                return

    def push(self, state: dict[str, torch.Tensor]) -> None:
        self.todo.put(state)

    def close(self, discard: bool = False, timeout_s: float = 30.0) -> None:
        """Stop after the queued sends (``discard``: drop them, the worker is gone) and drop
        the channel. A send stuck on a dead peer is left behind (a daemon thread)."""
        if discard:
            self.discard.set()
        self.todo.put(None)
        self.thread.join(timeout_s)
        if not self.thread.is_alive():
            self.channel.close()


class ChannelPublisher:
    """Versions pushed over a :class:`~archer.rollout.weight_transfer.WeightChannel`, one
    channel per worker (a restarted worker gets a fresh one).

    ``backend``/``device``: the channel's (gloo with CPU tensors, or nccl with the trainer's
    CUDA device); ``receivers``: the worker's channel members (vLLM: one per tensor-parallel
    worker)."""

    def __init__(self, backend: str = "gloo", device: torch.device | str = "cpu",
                 receivers: int = 1, host: str = "127.0.0.1", timeout_s: float = 300.0
                 ) -> None:
        self.backend, self.device, self.receivers = backend, torch.device(device), receivers
        self.host, self.timeout_s = host, timeout_s
        self.snapshots: dict[int, dict[str, torch.Tensor]] = {}  # version -> CPU clones
        self.layout = None  # the snapshots' tensor_layout (the same for every version)
        self.sender: ChannelSender | None = None
        self.held: int | None = None  # the version the worker holds once its calls so far ran

    def connect(self, worker) -> None:
        """A fresh channel to ``worker``: once the worker is up (a failed start raises here,
        not after the rendezvous times out), its rank-1 side is submitted first (it blocks in
        the rendezvous), then rank 0, the ``TCPStore`` master, is built here."""
        import ray

        from archer.rollout.weight_transfer import WeightChannel, free_port

        self._close_sender(discard=True)  # a previous worker's channel: that worker is gone
        ray.get(worker.pid.remote())
        port = free_port(self.host)
        opened = worker.open_channel.remote(self.host, port, self.backend, self.receivers,
                                            self.timeout_s)
        channel = WeightChannel(self.host, port, rank=0, backend=self.backend,
                                device=self.device, timeout_s=self.timeout_s,
                                receivers=self.receivers)
        ray.get(opened)
        self.sender, self.held = ChannelSender(channel), None

    def publish(self, version: int, model) -> None:
        from archer.rollout.weight_transfer import tensor_layout

        self.snapshots[version] = {k: v.detach().to("cpu", copy=True)
                                   for k, v in model.state_dict().items()}
        self.layout = tensor_layout(self.snapshots[version])

    def weights_for(self, worker, version: int) -> list[Any]:
        """Queue ``version`` to ``worker`` unless its calls so far leave it holding it; the
        request itself carries no weights."""
        if version != self.held:
            worker.receive_weights.remote(version, self.layout)
            self.sender.push(self.snapshots[version])
            self.held = version
        return []

    def release_before(self, version: int) -> None:
        for v in [v for v in self.snapshots if v < version]:
            del self.snapshots[v]  # a snapshot still queued is held by the sender's queue

    def _close_sender(self, discard: bool = False) -> None:
        if self.sender is not None:
            self.sender.close(discard, timeout_s=5.0 if discard else 30.0)
            self.sender = None

    def close(self) -> None:
        self._close_sender()
        self.snapshots.clear()
