"""Archer's loss as a verl worker loss function (the place that sees entropy and the reference).

verl's actor worker calls ``loss_fn(model_output=..., data=..., dp_group=...)`` once per
micro-batch; its default is ``verl.workers.utils.losses.ppo_loss``. :func:`archer_ppo_loss`
has that signature (with ``config``, verl's actor config, and ``algo``, Archer's AlgoConfig,
bound by ``functools.partial``) and replaces ppo_loss whole: it splits the micro-batch's tokens by
the current policy's entropy (``model_output["entropy"]``, present with
``actor.calculate_entropy=true``), takes the reference log-probs from ``data["ref_log_prob"]``
(verl computes them when ``actor.use_kl_loss=true``) and calls the SAME
:func:`archer.algos.policy_loss.compute_policy_loss` as Archer's trainer. verl's own KL term
(one coefficient on all tokens) is NOT added: Archer's per-class KL takes its place.

Aggregation across micro-batches and data-parallel ranks follows verl's ``agg_loss``: the
micro-batch's PG term is scaled by its share of the global batch (valid tokens for
``token-mean``, non-empty responses otherwise, times ``dp_size``), so the micro-batch losses
add up to verl's global-batch value. Each class's KL term is averaged over that class's tokens
WITHIN the micro-batch and weighted by the same share (verl gives no global per-class token
counts); it equals Archer's trainer exactly when a mini-batch is one micro-batch on one rank.
"""

from __future__ import annotations

from typing import Any

import torch

from archer.algos.policy_loss import compute_policy_loss
from archer.algos.split import split_by_entropy
from archer.algos.types import LossInputs
from archer.config import AlgoConfig
from archer.validation import ConfigError

# Metrics that are sums over micro-batches when verl normalises by the global batch
LOSS_METRICS = ("actor/pg_loss", "actor/kl_loss", "actor/loss")


def _batch_info(data) -> tuple[int, float | None, float | None]:
    """(dp_size, batch_num_tokens, global_batch_size) of the global batch, as verl's ppo_loss."""
    num_tokens, batch_size = data["batch_num_tokens"], data["global_batch_size"]
    return (int(data["dp_size"]), None if num_tokens is None else float(num_tokens),
            None if batch_size is None else float(batch_size))


def micro_batch_share(algo: AlgoConfig, response_mask: torch.Tensor, dp_size: int,
                      batch_num_tokens: float | None, global_batch_size: float | None) -> float:
    """The factor that turns this micro-batch's own aggregate into its part of verl's
    global-batch aggregate (``agg_loss`` with ``config.global_batch_info``)."""
    if algo.loss_agg_mode == "token-mean":
        local, total, name = float(response_mask.sum()), batch_num_tokens, "batch_num_tokens"
    else:
        local = float((response_mask.sum(dim=-1) > 0).sum())
        total, name = global_batch_size, "global_batch_size"
    if total is None:
        if dp_size > 1:
            raise ValueError(f"(global) {name} is required when dp_size > 1")
        return 1.0
    return max(local, 1.0) / total * dp_size


def _verl_metrics(out_metrics: dict[str, torch.Tensor], aggregation) -> dict[str, Any]:
    """Archer's metrics as verl Metric objects (loss terms with ``aggregation``, the rest
    averaged over micro-batches), plus verl's own name for the clip fraction."""
    from verl.utils.metric import AggregationType, Metric

    metrics = {}
    for key, value in out_metrics.items():
        agg = aggregation if key in LOSS_METRICS else AggregationType.MEAN
        metrics[key] = Metric(value=float(value), aggregation=agg)
    if "actor/clipfrac" in out_metrics:
        metrics["actor/pg_clipfrac"] = Metric(value=float(out_metrics["actor/clipfrac"]),
                                              aggregation=AggregationType.MEAN)
    return metrics


def _padded_inputs(model_output, data):
    """log-probs, entropy and the padded fields of ``data`` (as verl's ppo_loss reads them)."""
    from verl.workers.utils.padding import no_padding_2_padding

    entropy = model_output.get("entropy", None)
    if entropy is None:
        raise ConfigError("Archer's loss splits tokens by entropy: set "
                          "actor_rollout_ref.actor.calculate_entropy=true")
    log_prob = no_padding_2_padding(model_output["log_probs"], data)
    entropy = no_padding_2_padding(entropy, data).detach()
    if "rollout_is_weights" in data:
        raise ConfigError("rollout correction weights (algorithm.rollout_correction) are not "
                          "supported by Archer's loss in verl; disable rollout_correction")
    fields = ["response_mask", "old_log_probs", "advantages"]
    if "ref_log_prob" in data:
        fields.append("ref_log_prob")
    return log_prob, entropy, data.select(*fields).to_padded_tensor()


def archer_ppo_loss(config, model_output, data, dp_group=None, *, algo: AlgoConfig):
    """verl worker loss: Archer's ``algo.loss`` on one micro-batch -> (loss, metrics).

    ``config`` is verl's actor config (bound by partial, as ppo_loss's; unused here: the
    settings are already resolved into ``algo``). Raises ConfigError when verl did not give what the
    configuration needs (entropy; reference log-probs when a KL weight is > 0)."""
    from verl.utils.metric import AggregationType

    log_prob, entropy, fields = _padded_inputs(model_output, data)
    response_mask = fields["response_mask"].to(bool)
    ref = fields["ref_log_prob"] if "ref_log_prob" in fields.keys() else None
    if algo.needs_reference and ref is None:
        raise ConfigError("Archer's KL weights are > 0 but verl gave no reference log-probs: "
                          "set actor_rollout_ref.actor.use_kl_loss=true")
    dp_size, num_tokens, batch_size = _batch_info(data)
    global_norm = dp_size > 1 or num_tokens is not None or batch_size is not None or (
        algo.loss_norm_length is not None)
    share = micro_batch_share(algo, response_mask, dp_size, num_tokens, batch_size)
    split = split_by_entropy(entropy, response_mask, algo.entropy_quantile, "response")
    inputs = LossInputs(
        logprobs=log_prob, old_logprobs=fields["old_log_probs"],
        advantages=fields["advantages"], response_mask=response_mask,
        high_entropy_mask=split.high_entropy_mask,
        ref_logprobs=ref if algo.needs_reference else None, entropy=entropy,
    )
    scales = None if share == 1.0 else {"pg": share, "high": share, "low": share}
    out = compute_policy_loss(algo.loss, inputs, algo, with_metrics=True, scales=scales)
    aggregation = AggregationType.SUM if global_norm else AggregationType.MEAN
    return out.loss, _verl_metrics(out.metrics, aggregation)
