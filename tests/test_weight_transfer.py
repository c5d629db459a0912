"""archer.rollout.weight_transfer: a trainer's state dict reaches a second process over a
gloo weight channel, tensor for tensor (the NCCL backend is the same code, not run here)."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from archer.rollout.weight_transfer import WeightChannel, tensor_layout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sample_state(version: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(version)
    return {"embed.weight": torch.randn(5, 3, generator=g),
            "layer.bias": torch.randn(3, generator=g).to(torch.bfloat16),
            "steps": torch.tensor([version, 7], dtype=torch.long)}


def receiver(port: int, queue) -> None:
    channel = WeightChannel("127.0.0.1", port, rank=1, timeout_s=60)
    layout = tensor_layout(sample_state(0))
    queue.put([channel.receive(layout) for _ in range(2)])  # two published versions


@pytest.mark.slow  # two processes importing torch: ~30 s on 2 cores
def test_two_versions_arrive_exactly_in_another_process():
    port = free_port()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    proc = ctx.Process(target=receiver, args=(port, queue))
    proc.start()
    try:
        channel = WeightChannel("127.0.0.1", port, rank=0, timeout_s=60)
        for version in (1, 2):
            channel.send(sample_state(version))
        got = queue.get(timeout=60)
    finally:
        proc.join(timeout=60)
    assert proc.exitcode == 0
    for version, state in zip((1, 2), got):
        want = sample_state(version)
        assert list(state) == list(want)
        for name in want:
            assert state[name].dtype == want[name].dtype and torch.equal(state[name], want[name])


def test_layout_names_shapes_and_dtypes_in_order():
    assert tensor_layout(sample_state(0)) == [("embed.weight", (5, 3), "float32"),
                                              ("layer.bias", (3,), "bfloat16"),
                                              ("steps", (2,), "int64")]


def test_bad_backend_and_rank_are_refused():
    with pytest.raises(ValueError, match="backend='mpi' is invalid; allowed: gloo, nccl"):
        WeightChannel("127.0.0.1", free_port(), rank=0, backend="mpi")
    with pytest.raises(ValueError, match="rank=2 is invalid"):
        WeightChannel("127.0.0.1", free_port(), rank=2)
    with pytest.raises(ValueError, match=r"rank=3 is invalid; allowed: 0 .* or 1..2"):
        WeightChannel("127.0.0.1", free_port(), rank=3, receivers=2)
    with pytest.raises(ValueError, match="receivers=0 is invalid; allowed: an integer >= 1"):
        WeightChannel("127.0.0.1", free_port(), rank=0, receivers=0)
