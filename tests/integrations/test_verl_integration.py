"""archer.integrations.verl: Archer's and ASPO's losses run through verl's own code paths.

Through verl's worker loss route (``model_output``/``data`` as verl's engine passes them, with
``no_padding_2_padding`` and the global-batch info) our loss must equal the trainer's
``compute_policy_loss`` on the same tensors: value, metrics and gradient w.r.t. the log-probs.
On the special cases verl itself computes (equal clips for both classes, no KL; ASPO with only
negative advantages) it must equal verl's ``ppo_loss`` with ``loss_mode=vanilla``. The names
registered in verl's policy-loss registry refuse loudly (they get no entropy and no reference).
Skipped when verl is not importable (a dev-only dependency: pip install --no-deps verl).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        core_algos = pytest.importorskip(
            "verl.trainer.ppo.core_algos",
            reason="verl is a dev-only dependency (pip install --no-deps verl)",
        )
        from verl.utils import tensordict_utils as tu
        from verl.workers.config import ActorConfig, PolicyLossConfig
        from verl.workers.utils.losses import ppo_loss

        import archer.integrations.verl as archer_verl
except pytest.skip.Exception:
    raise
except Exception as exc:  # installed but broken (missing optional deps, version clash, ...)
    pytest.skip(f"verl failed to import: {exc!r}", allow_module_level=True)

from archer.algos.policy_loss import compute_policy_loss  # noqa: E402
from archer.algos.split import split_by_entropy  # noqa: E402
from archer.algos.types import LossInputs  # noqa: E402
from archer.config import AlgoConfig  # noqa: E402
from archer.integrations.verl.settings import algo_config_from_verl  # noqa: E402
from archer.integrations.verl.worker_loss import archer_ppo_loss  # noqa: E402
from archer.validation import ConfigError  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
# the archer_* trainer modes need verl's v1 trainer (transferqueue, torchdata, peft, ...)
needs_v1 = pytest.mark.skipif(
    not archer_verl.TRAINER_MODES, reason="verl.trainer.ppo.v1 is not importable")
MODES = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]
LOSS_METRICS = ("actor/pg_loss", "actor/kl_loss", "actor/loss")


def _actor(loss_mode="archer", **kw) -> ActorConfig:
    kw.setdefault("calculate_entropy", True)
    return ActorConfig(strategy="fsdp", rollout_n=1, ppo_micro_batch_size_per_gpu=2,
                       policy_loss=PolicyLossConfig(loss_mode=loss_mode), **kw)


def _batch(seed, b=6, p=3, t=9, negative_only=False):
    """Padded tensors of one batch and verl's layout of them (left-padded prompts, responses
    right-padded, the model output flat over all sequences' tokens)."""
    g = torch.Generator().manual_seed(seed)
    prompt_lens = torch.randint(1, p + 1, (b,), generator=g)
    resp_lens = torch.randint(1, t + 1, (b,), generator=g)
    resp_lens[0] = t
    attention = torch.zeros(b, p + t, dtype=torch.long)
    for i in range(b):
        attention[i, p - prompt_lens[i]:p] = 1
        attention[i, p:p + resp_lens[i]] = 1
    mask = attention[:, p:].bool()
    old = -torch.rand(b, t, generator=g) * 3
    log_ratio = torch.randn(b, t, generator=g) * 0.3
    spikes = torch.rand(b, t, generator=g) < 0.1
    logp = old + torch.where(spikes, log_ratio + 2.5, log_ratio)  # some r > c (dual clip)
    adv = torch.randn(b, generator=g)
    if negative_only:
        adv = -adv.abs() - 0.1
    return SimpleNamespace(
        prompts=torch.ones(b, p, dtype=torch.long), responses=torch.ones(b, t, dtype=torch.long),
        attention=attention, mask=mask, old=old, logp=logp,
        adv=(adv[:, None] * mask).float(), entropy=torch.rand(b, t, generator=g) * 3,
        ref=logp + torch.randn(b, t, generator=g) * 0.5,
        prompt_lens=prompt_lens, resp_lens=resp_lens,
    )


def _flat(padded: torch.Tensor, bt) -> torch.Tensor:
    """The (total_nnz,) model output whose response part is ``padded`` (differentiably);
    the inverse of verl's no_padding_2_padding, junk elsewhere."""
    seq_lens = bt.prompt_lens + bt.resp_lens
    ends = seq_lens.cumsum(0)
    flat = torch.full((int(ends[-1]),), -7.0, dtype=padded.dtype)
    index, rows, cols = [], [], []
    for i, (end, rl) in enumerate(zip(ends.tolist(), bt.resp_lens.tolist())):
        index += range(end - rl - 1, end - 1)
        rows += [i] * rl
        cols += range(rl)
    return flat.index_put((torch.tensor(index),), padded[torch.tensor(rows), torch.tensor(cols)])


def _verl_inputs(bt, logp_leaf, with_ref=True, dp_size=1, num_tokens=None, batch_size=None,
                 extra=None):
    tensors = {"prompts": bt.prompts, "responses": bt.responses, "attention_mask": bt.attention,
               "response_mask": bt.mask.long(), "old_log_probs": bt.old, "advantages": bt.adv}
    if with_ref:
        tensors["ref_log_prob"] = bt.ref
    tensors.update(extra or {})
    data = tu.get_tensordict(tensors, non_tensor_dict={
        "dp_size": dp_size, "batch_num_tokens": num_tokens, "global_batch_size": batch_size})
    model_output = {"log_probs": _flat(logp_leaf, bt), "entropy": _flat(bt.entropy, bt)}
    return model_output, data


def _ours(bt, algo, name, logp_leaf):
    """The trainer's compute_policy_loss on the padded tensors (entropy split per response)."""
    split = split_by_entropy(bt.entropy, bt.mask, algo.entropy_quantile, "response")
    return compute_policy_loss(name, LossInputs(
        logprobs=logp_leaf, old_logprobs=bt.old, advantages=bt.adv, response_mask=bt.mask,
        high_entropy_mask=split.high_entropy_mask,
        ref_logprobs=bt.ref if algo.needs_reference else None, entropy=bt.entropy), algo)


def _grad(loss, leaf):
    (g,) = torch.autograd.grad(loss, leaf)
    return g


ARCHER_SECTIONS = [
    {},  # Archer's reference recipe: loose clip on high-entropy tokens, KL on low ones
    {"entropy_quantile": 0.5, "high": {"clip_low": 0.3, "clip_high": 0.6, "kl_weight": 0.01,
                                       "pg_weight": 0.5}},
    {"kl_normalization": "all_tokens", "high": {"kl_weight": 0.02}},
]


@pytest.mark.parametrize("loss_mode", ["archer", "aspo"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("section", range(len(ARCHER_SECTIONS)))
@pytest.mark.parametrize("seed", range(2))
def test_worker_loss_is_the_trainers_loss(loss_mode, mode, section, seed):
    bt = _batch(seed)
    actor = _actor(loss_mode, loss_agg_mode=mode, use_kl_loss=True, kl_loss_coef=0.05,
                   clip_ratio_low=0.15, clip_ratio_high=0.25, clip_ratio_c=3.0)
    algo = algo_config_from_verl(actor, ARCHER_SECTIONS[section])
    assert algo.needs_reference and algo.low.kl_weight == 0.05
    leaf_v = bt.logp.clone().requires_grad_(True)
    # one micro-batch on one rank: the global batch is this batch, as verl's engine sets it
    model_output, data = _verl_inputs(bt, leaf_v, num_tokens=int(bt.mask.sum()),
                                      batch_size=bt.mask.shape[0])
    loss_v, metrics_v = archer_ppo_loss(actor, model_output, data, algo=algo)
    leaf_o = bt.logp.clone().requires_grad_(True)
    out = _ours(bt, algo, archer_verl.LOSS_MODES[loss_mode], leaf_o)
    torch.testing.assert_close(loss_v.detach(), out.loss.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(_grad(loss_v, leaf_v), _grad(out.loss, leaf_o),
                               atol=1e-6, rtol=1e-6)
    assert set(metrics_v) == set(out.metrics) | {"actor/pg_clipfrac"}
    for key, value in out.metrics.items():
        assert metrics_v[key].values == [pytest.approx(float(value), abs=1e-6)], key
    assert metrics_v["actor/kl_loss"].values[0] > 0  # the per-class KL is really in there
    agg = {k: m.aggregation.value for k, m in metrics_v.items()}
    assert {agg[k] for k in LOSS_METRICS} == {"sum"}
    assert agg["actor/clipfrac_high_entropy_upper"] == "mean"


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("dp_size", [1, 2])
def test_equal_classes_without_kl_is_verls_vanilla(mode, seed, dp_size):
    """Both classes at verl's clips, no KL: Archer is PPO-clip with dual clip, i.e. verl's
    ppo_loss with loss_mode=vanilla, also with verl's global-batch normalisation (the micro-
    batch is a part of a larger global batch on several ranks)."""
    bt = _batch(seed)
    kw = dict(loss_agg_mode=mode, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0,
              loss_scale_factor=16 if mode == "seq-mean-token-sum-norm" and seed else None)
    section = {"high": {"clip_low": 0.2, "clip_high": 0.28, "kl_weight": 0.0}}
    algo = algo_config_from_verl(_actor("archer", **kw), section)
    assert not algo.needs_reference and algo.high == algo.low
    sizes = {"num_tokens": int(bt.mask.sum()) * 3 + 5, "batch_size": bt.mask.shape[0] * 3,
             "dp_size": dp_size}
    leaf_v = bt.logp.clone().requires_grad_(True)
    out_v, data_v = _verl_inputs(bt, leaf_v, with_ref=False, **sizes)
    loss_v, metrics_v = ppo_loss(_actor("vanilla", **kw), out_v, data_v)
    leaf_a = bt.logp.clone().requires_grad_(True)
    out_a, data_a = _verl_inputs(bt, leaf_a, with_ref=False, **sizes)
    loss_a, metrics_a = archer_ppo_loss(_actor("archer", **kw), out_a, data_a, algo=algo)
    torch.testing.assert_close(loss_a.detach(), loss_v.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(_grad(loss_a, leaf_a), _grad(loss_v, leaf_v), atol=1e-6,
                               rtol=1e-6)
    for key in ("actor/pg_clipfrac", "actor/ppo_kl"):
        assert metrics_a[key].values[0] == pytest.approx(metrics_v[key].values[0], abs=1e-6)
    assert metrics_a["actor/pg_loss"].aggregation == metrics_v["actor/pg_loss"].aggregation


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("seed", range(3))
def test_aspo_with_negative_advantages_is_verls_vanilla(mode, seed):
    """ASPO changes only the A > 0 tokens (and the dual clip, kept out of reach here): with
    every advantage negative it is PPO-clip, verl's vanilla."""
    bt = _batch(seed, negative_only=True)
    kw = dict(loss_agg_mode=mode, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=1e9)
    algo = algo_config_from_verl(_actor("aspo", **kw), {"high": {"clip_low": 0.2,
                                                                "clip_high": 0.28}})
    assert algo.loss == "aspo"
    leaf_v = bt.logp.clone().requires_grad_(True)
    out_v, data_v = _verl_inputs(bt, leaf_v, with_ref=False)
    loss_v, _ = ppo_loss(_actor("vanilla", **kw), out_v, data_v)
    leaf_a = bt.logp.clone().requires_grad_(True)
    out_a, data_a = _verl_inputs(bt, leaf_a, with_ref=False)
    loss_a, _ = archer_ppo_loss(_actor("aspo", **kw), out_a, data_a, algo=algo)
    torch.testing.assert_close(loss_a.detach(), loss_v.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(_grad(loss_a, leaf_a), _grad(loss_v, leaf_v), atol=1e-6,
                               rtol=1e-6)


def test_aspo_differs_from_vanilla_on_positive_advantages():
    # the check above is not vacuous: with A > 0 ASPO's 1/r weighting gives another gradient
    bt = _batch(0)
    kw = dict(loss_agg_mode="token-mean", clip_ratio_c=1e9)
    algo = algo_config_from_verl(_actor("aspo", **kw), {"high": {"clip_low": 0.2,
                                                                "clip_high": 0.2}})
    leaf_v, leaf_a = (bt.logp.clone().requires_grad_(True) for _ in range(2))
    loss_v, _ = ppo_loss(_actor("vanilla", **kw), *_verl_inputs(bt, leaf_v, with_ref=False))
    loss_a, _ = archer_ppo_loss(_actor("aspo", **kw), *_verl_inputs(bt, leaf_a, with_ref=False),
                                algo=algo)
    assert (_grad(loss_a, leaf_a) - _grad(loss_v, leaf_v)).abs().max() > 1e-3


@pytest.mark.parametrize("loss_mode", ["archer", "aspo"])
@pytest.mark.parametrize("mode", MODES)
def test_micro_batches_add_up_to_the_whole_batch(loss_mode, mode):
    """verl calls the loss per micro-batch with the global batch's sizes; without KL the
    micro-batch losses (and gradients) add up to the trainer's loss on the whole batch."""
    bt = _batch(3, b=8)
    actor = _actor(loss_mode, loss_agg_mode=mode)
    algo = algo_config_from_verl(actor, {"high": {"clip_low": 0.4}})
    assert algo.high != algo.low and not algo.needs_reference
    leaf = bt.logp.clone().requires_grad_(True)
    sizes = {"num_tokens": int(bt.mask.sum()), "batch_size": bt.mask.shape[0]}
    total = 0.0
    for rows in (slice(0, 3), slice(3, 8)):
        part = SimpleNamespace(**{k: v[rows] for k, v in vars(bt).items()})
        loss, _ = archer_ppo_loss(actor, *_verl_inputs(part, leaf[rows], False, **sizes),
                                  algo=algo)
        total = total + loss
    leaf_o = bt.logp.clone().requires_grad_(True)
    out = _ours(bt, algo, algo.loss, leaf_o)
    torch.testing.assert_close(total.detach(), out.loss.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(_grad(total, leaf), _grad(out.loss, leaf_o), atol=1e-6,
                               rtol=1e-6)


# ------------------------------------------------------------------ refusals, never silence


@pytest.mark.parametrize("loss_mode", ["archer", "aspo"])
def test_the_registered_losses_refuse_verls_default_worker_loss(loss_mode):
    fn = core_algos.get_policy_loss_fn(loss_mode)
    assert fn is archer_verl.policy_loss.REGISTERED[loss_mode]
    bt = _batch(0)
    with pytest.raises(archer_verl.NeedsArcherWorkerLoss, match="trainer_mode=archer_sync"):
        fn(old_log_prob=bt.old, log_prob=bt.logp, advantages=bt.adv, response_mask=bt.mask,
           loss_agg_mode="token-mean", config=_actor(loss_mode), rollout_is_weights=None)
    # the same through verl's own ppo_loss, even with its use_kl_loss set
    with pytest.raises(archer_verl.NeedsArcherWorkerLoss, match="no token entropy"):
        ppo_loss(_actor(loss_mode, use_kl_loss=True), *_verl_inputs(bt, bt.logp))


def test_worker_loss_refuses_what_verl_did_not_give():
    bt = _batch(1)
    actor = _actor("archer", use_kl_loss=True)
    algo = algo_config_from_verl(actor)
    model_output, data = _verl_inputs(bt, bt.logp, with_ref=False)
    with pytest.raises(ConfigError, match="use_kl_loss=true"):
        archer_ppo_loss(actor, model_output, data, algo=algo)
    model_output, data = _verl_inputs(bt, bt.logp)
    del model_output["entropy"]
    with pytest.raises(ConfigError, match="calculate_entropy=true"):
        archer_ppo_loss(actor, model_output, data, algo=algo)
    model_output, data = _verl_inputs(bt, bt.logp, extra={"rollout_is_weights": bt.old * 0})
    with pytest.raises(ConfigError, match="rollout_correction"):
        archer_ppo_loss(actor, model_output, data, algo=algo)


@pytest.mark.parametrize(("actor_kw", "section", "match"), [
    ({}, {"low": {"clip_low": 0.1}}, "clip_ratio_low"),
    ({}, {"dual_clip_c": 5.0}, "clip_ratio_c"),
    ({}, {"advantage": "rloo"}, "algorithm.adv_estimator"),
    ({}, {"entropy_quantil": 0.7}, "did you mean 'archer.entropy_quantile'"),
    ({}, {"entropy_scope": "group"}, "allowed: 'response'"),
    ({}, {"entropy_source": "old"}, "allowed: 'current'"),
    ({}, {"high": {"kl_weight": 0.1}}, "use_kl_loss=true"),
    ({"loss_agg_mode": "token-sum"}, {}, "token-sum"),
    ({"kl_loss_type": "k3+"}, {}, "kl_loss_type"),
    ({"entropy_coeff": 0.01}, {}, "entropy_coeff must be 0"),
])
def test_settings_refuse_what_archer_cannot_honour(actor_kw, section, match):
    with pytest.raises(ConfigError, match=match):
        algo_config_from_verl(_actor("archer", **actor_kw), section)


def test_settings_map_verls_keys():
    actor = _actor("aspo", clip_ratio_low=0.1, clip_ratio_high=0.3, clip_ratio_c=4.0,
                   loss_agg_mode="seq-mean-token-sum-norm", loss_scale_factor=64,
                   use_kl_loss=True, kl_loss_coef=0.002, kl_loss_type="mse")
    algo = algo_config_from_verl(actor, {"entropy_quantile": 0.6, "high": {"clip_high": 0.7}})
    assert (algo.loss, algo.low.clip_low, algo.low.clip_high, algo.low.kl_weight) == (
        "aspo", 0.1, 0.3, 0.002)
    assert (algo.dual_clip_c, algo.loss_agg_mode, algo.loss_norm_length, algo.kl_estimator) == (
        4.0, "seq-mean-token-sum-norm", 64, "k2")
    assert (algo.entropy_quantile, algo.high.clip_low, algo.high.clip_high) == (0.6, 0.5, 0.7)
    assert algo_config_from_verl(_actor("archer", use_kl_loss=False)).low.kl_weight == 0.0


# ------------------------------------------------------------------ installation into verl


class _WorkerGroup:
    def __init__(self):
        self.loss_fns = []

    def set_loss_fn(self, loss_fn):
        self.loss_fns.append(loss_fn)


def _trainer_config(loss_mode="archer", archer=None, calculate_entropy=True,
                    distillation=False):
    from omegaconf import OmegaConf

    actor = {"_target_": "verl.workers.config.ActorConfig", "strategy": "fsdp", "rollout_n": 1,
             "ppo_micro_batch_size_per_gpu": 2, "calculate_entropy": calculate_entropy,
             "use_kl_loss": True, "kl_loss_coef": 0.01,
             "policy_loss": {"_target_": "verl.workers.config.PolicyLossConfig",
                             "loss_mode": loss_mode}}
    cfg = {"actor_rollout_ref": {"actor": actor}, "distillation": {"enabled": distillation}}
    if archer is not None:
        cfg["archer"] = archer
    return OmegaConf.create(cfg)


def test_install_sends_a_picklable_archer_loss_to_the_actor_workers():
    trainer = SimpleNamespace(config=_trainer_config(archer={"high": {"clip_low": 0.3}}),
                              actor_rollout_wg=_WorkerGroup())
    algo = archer_verl.install_archer_loss(trainer)
    assert (algo.high.clip_low, algo.low.kl_weight) == (0.3, 0.01)
    (loss_fn,) = trainer.actor_rollout_wg.loss_fns
    loss_fn = pickle.loads(pickle.dumps(loss_fn))  # Ray ships it to every rank this way
    bt = _batch(2)
    leaf = bt.logp.clone().requires_grad_(True)
    model_output, data = _verl_inputs(bt, leaf)
    loss, _ = loss_fn(model_output=model_output, data=data, dp_group=None)
    out = _ours(bt, algo, "dual_token_clip", bt.logp)
    torch.testing.assert_close(loss.detach(), out.loss, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize(("kw", "match"), [({"loss_mode": "vanilla"}, "must be one of"),
                                           ({"calculate_entropy": False}, "calculate_entropy"),
                                           ({"distillation": True}, "distillation")])
def test_install_refuses_a_config_without_archer_loss(kw, match):
    trainer = SimpleNamespace(config=_trainer_config(**kw), actor_rollout_wg=_WorkerGroup())
    with pytest.raises(ConfigError, match=match):
        archer_verl.install_archer_loss(trainer)
    assert trainer.actor_rollout_wg.loss_fns == []


@needs_v1
def test_archer_trainer_modes_install_the_loss_at_init_end():
    from verl.trainer.ppo.v1 import get_trainer_cls

    cls = get_trainer_cls("archer_sync")
    assert cls.__mro__[2] is get_trainer_cls("sync")
    trainer = object.__new__(cls)  # no Ray cluster: only the hook is exercised
    trainer.config, trainer.actor_rollout_wg = _trainer_config(), _WorkerGroup()
    synced = []
    trainer.global_steps = 7
    trainer.checkpoint_manager = SimpleNamespace(update_weights=synced.append)
    trainer.on_init_end()
    assert synced == [7]  # verl's own hook still runs (weight sync after a checkpoint load)
    assert len(trainer.actor_rollout_wg.loss_fns) == 1
    assert trainer.archer_algo.loss == "dual_token_clip"


# ------------------------------------------------------------------ reaching the Ray workers

_PROBE = ("import verl.trainer.ppo.core_algos as c\n"
          "from verl.trainer.ppo.v1 import get_trainer_cls\n"
          "print(sorted(k for k in c.POLICY_LOSS_REGISTRY if k in ('archer', 'aspo')),"
          " get_trainer_cls('archer_sync').__name__)\n")


def _probe(tmp_path, **env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")}
    full.update(env)
    run = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, env=full,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return run.stdout.strip().splitlines()[-1]


@pytest.mark.slow
@needs_v1
def test_verl_use_external_modules_registers_everything(tmp_path):
    out = _probe(tmp_path, PYTHONPATH=str(ROOT),
                 VERL_USE_EXTERNAL_MODULES="archer.integrations.verl")
    assert out == "['archer', 'aspo'] ArcherPPOTrainerSync"


@pytest.mark.slow
@needs_v1
def test_the_verl_plugins_entry_point_registers_everything(tmp_path):
    # a distribution on sys.path that declares what pyproject.toml declares
    dist = tmp_path / "site" / "archer_probe-0.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: archer-probe\nVersion: 0.0\n")
    (dist / "entry_points.txt").write_text(
        "[verl.plugins]\narcher = archer.integrations.verl\n")
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '[project.entry-points."verl.plugins"]\narcher = "archer.integrations.verl"' in pyproject
    out = _probe(tmp_path, PYTHONPATH=os.pathsep.join([str(ROOT), str(dist.parent)]),
                 VERL_USE_EXTERNAL_PLUGINS="archer")
    assert out == "['archer', 'aspo'] ArcherPPOTrainerSync"
    # and VERL_USE_EXTERNAL_PLUGINS=none switches it off: the control
    full = {k: v for k, v in os.environ.items() if not k.startswith("VERL_USE_EXTERNAL")}
    full.update(PYTHONPATH=os.pathsep.join([str(ROOT), str(dist.parent)]),
                VERL_USE_EXTERNAL_PLUGINS="none")
    run = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, env=full,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode != 0 and "archer_sync" in run.stderr


def test_the_documented_command_line_passes_verls_checks_and_installs():
    """verl's own Hydra config, with the overrides docs/guides/migrating.md gives (plus the
    batch sizes every verl run sets): verl's validate_config accepts the top-level archer
    section, and the loss resolves to Archer's reference recipe."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    doc = (ROOT / "docs" / "guides" / "migrating.md").read_text()
    block = doc.split("python -m verl.trainer.main_ppo <your usual verl overrides> \\\n")[1]
    overrides = block.split("```")[0].replace("\\\n", " ").split()
    assert "trainer.v1.trainer_mode=archer_sync" in overrides
    overrides += ["actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu=4",
                  "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu=4",
                  "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu=4",
                  "actor_rollout_ref.rollout.name=vllm", "algorithm.adv_estimator=grpo",
                  "trainer.n_gpus_per_node=1", "actor_rollout_ref.actor.ppo_mini_batch_size=8",
                  "data.train_batch_size=16"]
    config_dir = Path(core_algos.__file__).resolve().parents[1] / "config"
    with initialize_config_dir(config_dir=str(config_dir), version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        validate_config(config=cfg, use_reference_policy=need_reference_policy(cfg),
                        use_critic=need_critic(cfg))
    OmegaConf.resolve(cfg)  # as verl's TaskRunner does before building the trainer
    trainer = SimpleNamespace(config=cfg, actor_rollout_wg=_WorkerGroup())
    algo = archer_verl.install_archer_loss(trainer)
    default = AlgoConfig()  # Archer's reference recipe
    assert (algo.high, algo.low, algo.dual_clip_c, algo.loss_agg_mode, algo.kl_estimator,
            algo.entropy_quantile, algo.kl_normalization) == (
        default.high, default.low, default.dual_clip_c, default.loss_agg_mode,
        default.kl_estimator, default.entropy_quantile, default.kl_normalization)
    pickle.loads(pickle.dumps(trainer.actor_rollout_wg.loss_fns[0]))
