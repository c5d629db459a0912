"""Data-parallel training with torch FSDP2: process group, sharding, collectives, state dicts.

Launch with ``torchrun`` (it sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT)::

    torchrun --nproc_per_node 2 -m archer.cli train algo=archer total_steps=30

Without those variables (or with WORLD_SIZE=1) :func:`init_distributed` returns
:data:`SINGLE`: no process group, no sharding, every helper is the identity, so a
single-process run is unchanged in behaviour and speed.

Sharding (:func:`shard_model`): ``fully_shard`` (FSDP2) on each decoder layer (the model's
``_no_split_modules`` classes), then on the root. Gradients are reduced with a SUM, not the
default mean: each rank's loss is already its share of the global loss (global
denominators, see ``archer.trainer``), so the summed gradient equals the single-process one.

No-grad passes (generation, old/reference log-probs, entropy pre-passes, validation) run under
:func:`full_params`: every FSDP unit is gathered once and kept gathered, so ranks may run
different numbers of forward passes (HF ``generate`` stops at different steps on each rank)
without a collective mismatch. Training forward/backward passes are sharded per layer and must
be made in lockstep: every rank runs the same number of micro-batches (padding with
zero-weight dummy ones, see ``archer.trainer.accumulate_gradients``).

Backend: NCCL when CUDA is available (device ``cuda:LOCAL_RANK``), else gloo on CPU. Only the
gloo path is tested here; NCCL/multi-GPU is written for but not verified in this repository.
"""

from __future__ import annotations

import datetime
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from archer.config import ConfigError, check_device

MP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits. ``world_size == 1``: single process, every helper a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None  # None: no process group

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # --- collectives (identity in a single process) -------------------------------------

    def all_reduce(self, values: list[float], op: str = "sum") -> list[float]:
        """Element-wise sum / max / min of a list of floats over ranks (float64)."""
        if not self.enabled or not values:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                               "min": dist.ReduceOp.MIN}[op])
        return t.cpu().tolist()

    def sum(self, value: float) -> float:
        return self.all_reduce([value])[0]

    def max(self, value: float) -> float:
        return self.all_reduce([value], "max")[0]

    def all_gather_object(self, obj: Any) -> list[Any]:
        """[obj of rank 0, obj of rank 1, ...] on every rank (small picklable objects)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_gather_cat(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate a 1-D tensor of any length per rank, in rank order."""
        if not self.enabled:
            return t
        import torch.distributed as dist

        sizes = [int(n) for n in self.all_gather_object(t.numel())]
        width = max(sizes)
        buf = torch.zeros(width, dtype=t.dtype, device=self._comm_device())
        buf[: t.numel()] = t.to(buf.device)
        parts = [torch.empty_like(buf) for _ in range(self.world_size)]
        dist.all_gather(parts, buf)
        return torch.cat([p[:n] for p, n in zip(parts, sizes)]).to(t.device)

    def barrier(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def _comm_device(self) -> str:
        return self.device if self.backend == "nccl" else "cpu"


SINGLE = DistInfo()


def resolve_device(spec: str = "auto", name: str = "device") -> str:
    """The torch device a config's ``device`` names (checked first: ``auto``, ``cpu``,
    ``cuda`` or ``cuda:N``): ``auto`` is CUDA when torch sees a GPU, else CPU; asking for a
    GPU that torch does not see is an error, never a silent CPU run."""
    check_device(name, spec)
    if spec == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"{name}={spec!r} but torch sees no CUDA GPU (torch "
                              f"{torch.__version__}); use {name}=cpu or {name}=auto")
        index = int(spec.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise ConfigError(f"{name}={spec!r} but torch sees only "
                              f"{torch.cuda.device_count()} GPU(s)")
    return spec


def init_distributed(backend: str = "auto", timeout_s: int = 1800,
                     device: str = "auto") -> DistInfo:
    """Join the process group described by torchrun's environment; :data:`SINGLE` without one.

    ``backend``: ``auto`` (nccl when CUDA is used, else gloo), ``gloo`` or ``nccl``.
    ``device``: ``auto``/``cuda`` (each process on ``cuda:LOCAL_RANK``; ``cuda`` fails without
    a GPU) or ``cpu`` (every rank on the CPU, even where GPUs are present). Idempotent: an
    existing default process group is reused."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"device={device!r} under torchrun: each rank takes "
                           "cuda:LOCAL_RANK; use device=auto, cuda or cpu")
    resolve_device(device)  # cuda without a GPU is an error here too
    import torch.distributed as dist

    missing = [k for k in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
               if k not in os.environ]
    if missing:
        raise RuntimeError(f"WORLD_SIZE={world} but {missing} are not set; launch with torchrun")
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    cuda = torch.cuda.is_available() and device != "cpu"
    if backend == "auto":
        backend = "nccl" if cuda else "gloo"
    if backend == "nccl" and not cuda:
        raise RuntimeError("distributed.backend=nccl needs CUDA; use gloo on CPU")
    device = "cpu"
    if cuda:
        if local >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK={local} but only {torch.cuda.device_count()} GPUs")
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": torch.device(device)} if cuda else {}))
    if dist.get_world_size() != world or dist.get_rank() != rank:
        raise RuntimeError("the existing process group does not match RANK/WORLD_SIZE")
    return DistInfo(rank=rank, world_size=world, local_rank=local, device=device,
                    backend=dist.get_backend())


def shutdown(info: DistInfo, barrier: bool = False) -> None:
    """Leave the process group. ``barrier``: every rank is leaving at the same point (the
    run finished, or all ranks stopped on request), so each first waits for the others and
    none tears its gloo connections down while another still uses them (a peer closing
    early made gloo abort the other rank with SIGABRT). Not after an error: the other ranks
    may be inside a collective, and torchrun stops them when this one exits."""
    if info.enabled:
        import torch.distributed as dist

        if dist.is_initialized():
            if barrier:
                try:
                    dist.barrier()
                except Exception:  # noqa: BLE001  (a peer died meanwhile: nothing to wait for)
                    pass
            dist.destroy_process_group()


# --------------------------------------------------------------------------------------
# FSDP2
# --------------------------------------------------------------------------------------


def decoder_layers(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The model's transformer blocks: modules whose class is in HF's ``_no_split_modules``."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    layers = [m for m in model.modules() if type(m).__name__ in names]
    if not layers:
        raise ValueError(f"{type(model).__name__} declares no decoder layer classes "
                         "(_no_split_modules); cannot shard it per layer")
    return layers


def shard_model(model: torch.nn.Module, info: DistInfo, mixed_precision: str = "none",
                reshard_after_forward: bool = True) -> torch.nn.Module:
    """``fully_shard`` each decoder layer, then the root (in place; returns the model).

    Gradients are SUM-reduced (divide factor 1): the trainer scales each rank's loss to its
    share of the global loss. ``mixed_precision``: ``bf16``/``fp16`` casts parameters for the
    forward/backward and reduces gradients in float32; the sharded master weights and the
    optimizer state keep the load dtype. A no-op for a single process."""
    if not info.enabled:
        if mixed_precision != "none":
            warnings.warn("distributed.mixed_precision applies to FSDP runs only; ignored in a "
                          "single process (use dtype)", stacklevel=2)
        return model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(info.device.split(":")[0], (info.world_size,))
    mp = MixedPrecisionPolicy()
    if mixed_precision != "none":
        mp = MixedPrecisionPolicy(param_dtype=MP_DTYPES[mixed_precision],
                                  reduce_dtype=torch.float32)
    for layer in decoder_layers(model):
        fully_shard(layer, mesh=mesh, mp_policy=mp, reshard_after_forward=reshard_after_forward)
    fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)  # gloo has no PREMUL_SUM
    return model


def fsdp_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return []
    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def is_sharded(model: torch.nn.Module) -> bool:
    return bool(fsdp_modules(model))


@contextmanager
def full_params(*models: torch.nn.Module | None):
    """Gather every FSDP unit of ``models`` once and keep it gathered inside the block (for
    no-grad passes: no per-forward collectives, so ranks need not run in lockstep); reshard
    on exit. A no-op for unsharded models. Collective: every rank must enter it."""
    groups = [(m, fsdp_modules(m)) for m in models if m is not None]
    groups = [(m, mods) for m, mods in groups if mods]
    saved = []
    for _, mods in groups:
        for m in mods:
            pg = m._get_fsdp_state()._fsdp_param_group
            saved.append((m, pg is not None and pg.post_forward_mesh_info is not None))
            m.set_reshard_after_forward(False, recurse=False)
            m.unshard()
    try:
        yield
    finally:
        for m, reshard in saved:
            m.set_reshard_after_forward(reshard, recurse=False)
            m.reshard()


def full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None
                     ) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(model, optimizer) full, unsharded state dicts on CPU. Collective for a sharded model,
    and then complete on rank 0 only (the other ranks get empty dicts: rank 0 writes);
    plain ``state_dict()`` otherwise.

    An optimizer that has not stepped yet keeps no state: torch's ``get_optimizer_state_dict``
    would create it with a zero-gradient ``step()`` (Adam's step count 1, so the first real
    update is bias-corrected as a second one, unlike a single process); that state is
    dropped again and the saved dict has an empty ``state``."""
    if not is_sharded(model):
        return model.state_dict(), None if optimizer is None else optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    msd = get_model_state_dict(model, options=opts)
    if optimizer is None:
        return msd, None
    fresh = not optimizer.state
    osd = get_optimizer_state_dict(model, optimizer, options=opts)
    if fresh:
        optimizer.state.clear()
        osd = {"state": {}, "param_groups": osd.get("param_groups", [])}
    return msd, osd


def load_full_state_dicts(model: torch.nn.Module, optimizer: torch.optim.Optimizer | None,
                          model_sd: dict[str, Any], optim_sd: dict[str, Any] | None) -> None:
    """Load full state dicts (as saved by :func:`full_state_dicts`) into a sharded or plain
    model and its optimizer; every rank passes the full dicts."""
    if not is_sharded(model):
        model.load_state_dict(model_sd)
        if optimizer is not None and optim_sd is not None:
            optimizer.load_state_dict(optim_sd)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True)
    set_model_state_dict(model, model_sd, options=opts)
    if optimizer is not None and optim_sd is not None:
        # an optimizer saved before its first step has no state: it stays fresh (see
        # full_state_dicts); param_groups are the config's (the trainer sets the lr per step)
        if optim_sd.get("state"):
            set_optimizer_state_dict(model, optimizer, optim_sd, options=opts)


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A DTensor's full value (collective); a plain tensor unchanged."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def shard_slice(n: int, info: DistInfo) -> slice:
    """This rank's contiguous share of ``n`` items; ``n`` must divide evenly."""
    if n % info.world_size:
        raise ValueError(f"{n} items cannot be split evenly over {info.world_size} ranks")
    k = n // info.world_size
    return slice(info.rank * k, (info.rank + 1) * k)
