"""HF rollout backend on a tiny local model: masks, truncation, grouping, seeding, and the
key check that sampler log-probs equal a teacher-forced forward pass (left padding)."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from archer.models import build_tiny_model, load_policy_and_ref
from archer.rollout import HFRollout, SamplingParams
from archer.types import RolloutBatch

# Prompts of different lengths, so left padding is exercised.
PROMPTS = ["<s>User: hi\nAssistant:", "<s>User: what is 12 + 30?\nAssistant:", "<s>a"]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def tiny(tiny_path):
    policy, _, tokenizer = load_policy_and_ref(tiny_path, need_ref=False)
    return policy, tokenizer


@pytest.fixture(scope="module")
def batch(tiny) -> RolloutBatch:
    policy, tokenizer = tiny
    backend = HFRollout(policy, tokenizer, batch_size=2)  # 2 micro-batches for 3 prompts
    return backend.generate(
        PROMPTS, SamplingParams(temperature=0.7, n=8, max_new_tokens=48, seed=3)
    )


def teacher_forced_logprobs(model, batch, temperature, attend_to_pads=False):
    """(N, R) log_softmax(logits / T) of the trainer's forward pass, at the sampled tokens."""
    inputs = batch.model_inputs()
    if attend_to_pads:  # a deliberately wrong forward pass, to show the check has teeth
        inputs["attention_mask"] = torch.ones_like(inputs["attention_mask"])
    with torch.no_grad():
        logits = model(**inputs).logits.float()  # (N, T, V)
    p = batch.prompt_length
    resp_logits = logits[:, p - 1 : -1] / temperature  # (N, R, V) predicts response tokens
    lp = F.log_softmax(resp_logits, dim=-1)
    return lp.gather(-1, batch.response_ids.unsqueeze(-1)).squeeze(-1), resp_logits


def test_shapes_and_prompt_padding(batch, tiny):
    _, tok = tiny
    n_rows = len(PROMPTS) * 8
    assert batch.num_samples == n_rows and len(batch.texts) == n_rows
    assert batch.sampler_logprobs.dtype == torch.float32
    assert batch.truncated.dtype == torch.bool
    # Left padding: each prompt mask row is 0...0 1...1 and pads sit where the mask is 0.
    m = batch.prompt_mask
    assert torch.all(m[:, 1:] >= m[:, :-1])
    assert torch.all(batch.prompt_ids[m == 0] == tok.pad_token_id)
    assert m[:, 0].min() == 0, "prompts of different lengths must produce padding"
    for i, row in enumerate(batch.prompt_ids):
        text = tok.decode(row[m[i] == 1].tolist())
        assert text == PROMPTS[int(batch.group_index[i])]


def test_response_mask_stops_at_first_eos_and_flags_truncation(batch, tiny):
    _, tok = tiny
    eos, pad = tok.eos_token_id, tok.pad_token_id
    mask = batch.response_mask
    assert torch.all(mask[:, 1:] <= mask[:, :-1]), "mask must be a prefix of ones"
    assert torch.equal(batch.response_lengths, mask.sum(-1))
    ended = ~batch.truncated
    # This seed gives both kinds of rows (random init: p(eos) ~ 1/104 per token).
    assert ended.any() and batch.truncated.any()
    for i in range(batch.num_samples):
        length = int(batch.response_lengths[i])
        valid = batch.response_ids[i, :length]
        assert torch.all(batch.response_ids[i, length:] == pad)
        assert torch.all(batch.sampler_logprobs[i, length:] == 0)
        if batch.truncated[i]:
            assert length == 48 and eos not in valid.tolist()
        else:  # EOS itself is a valid (trained-on) token, and the only EOS
            assert valid[-1] == eos and eos not in valid[:-1].tolist()
            assert not batch.texts[i].endswith("</s>")


def test_sampler_logprobs_match_teacher_forced_forward(batch, tiny):
    policy, _ = tiny
    expected, _ = teacher_forced_logprobs(policy, batch, temperature=0.7)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(batch.sampler_logprobs[mask], expected[mask], atol=1e-4, rtol=0)
    # The check has teeth: the wrong temperature, or attending to the left pads, disagree.
    for wrong in (
        teacher_forced_logprobs(policy, batch, 1.0)[0],
        teacher_forced_logprobs(policy, batch, 0.7, attend_to_pads=True)[0],
    ):
        assert (batch.sampler_logprobs[mask] - wrong[mask]).abs().max() > 1e-3


def test_trainer_forward_matches_the_sampler_with_and_without_logits_to_keep(batch, tiny,
                                                                            monkeypatch):
    """The trainer's forward (only the response positions' logits, via logits_to_keep)
    scores the sampled tokens as the sampler did, and its entropy is the full-logits one;
    a model without logits_to_keep takes the fallback and gives the same numbers."""
    import archer.trainer.logprobs as T
    from archer.algos.entropy import entropy_naive

    policy, _ = tiny
    mask = batch.response_mask.bool()
    with torch.no_grad():
        lp, ent = T.forward_tokens(policy, batch, 0.7)
        lp_only, none = T.forward_tokens(policy, batch, 0.7, entropy=False)
    _, resp_logits = teacher_forced_logprobs(policy, batch, temperature=0.7)
    torch.testing.assert_close(lp[mask], batch.sampler_logprobs[mask], atol=1e-4, rtol=0)
    torch.testing.assert_close(ent, entropy_naive(resp_logits), atol=1e-4, rtol=0)
    assert none is None and torch.equal(lp_only, lp)
    assert T.keeps_logits(type(policy))
    # forward_tokens looks keeps_logits up in archer.trainer.logprobs: patch it there
    monkeypatch.setattr(T, "keeps_logits", lambda cls: False)
    kept = []
    hook = policy.register_forward_pre_hook(
        lambda mod, args, kwargs: kept.append("logits_to_keep" in kwargs), with_kwargs=True)
    with torch.no_grad():
        lp2, ent2 = T.forward_tokens(policy, batch, 0.7)
    hook.remove()
    assert kept == [False]  # the fallback ran: all positions' logits, then cut
    torch.testing.assert_close(lp2, lp, atol=1e-5, rtol=0)
    torch.testing.assert_close(ent2, ent, atol=1e-5, rtol=0)


def test_top_p_logprobs_are_renormalised_and_top_k_restricts(tiny):
    policy, tok = tiny
    backend = HFRollout(policy, tok, batch_size=4)
    b = backend.generate(PROMPTS, SamplingParams(top_p=0.5, n=4, max_new_tokens=16, seed=0))
    full, _ = teacher_forced_logprobs(policy, b, temperature=1.0)
    mask = b.response_mask.bool()
    assert torch.isfinite(b.sampler_logprobs).all()
    # Renormalising over the nucleus raises every kept token's log-prob above the full one.
    assert torch.all(b.sampler_logprobs[mask] > full[mask] + 1e-3)

    b = backend.generate(PROMPTS, SamplingParams(top_k=3, n=4, max_new_tokens=16, seed=0))
    _, logits = teacher_forced_logprobs(policy, b, temperature=1.0)
    rank = (logits > logits.gather(-1, b.response_ids.unsqueeze(-1))).sum(-1)  # (N, R)
    assert rank[b.response_mask.bool()].max() < 3


def test_same_seed_same_samples_and_global_rng_untouched(tiny):
    policy, tok = tiny
    backend = HFRollout(policy, tok, batch_size=2)
    params = SamplingParams(n=2, max_new_tokens=12, seed=7)
    torch.manual_seed(123)
    a = backend.generate(PROMPTS, params)
    after_a = torch.rand(1)
    torch.manual_seed(123)
    b = backend.generate(PROMPTS, params)
    assert torch.rand(1) == after_a  # the seeded rollout did not consume global RNG
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    c = backend.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=12, seed=8))
    assert not torch.equal(a.response_ids, c.response_ids)


def test_groups_are_contiguous_and_samples_differ(batch):
    assert batch.group_index.tolist() == [g for g in range(len(PROMPTS)) for _ in range(8)]
    for g in range(len(PROMPTS)):
        rows = batch.response_ids[batch.group_index == g]
        assert len({tuple(r.tolist()) for r in rows}) > 1, "n samples should not be copies"


def test_greedy_is_deterministic_argmax_with_zero_logprob(tiny):
    policy, tok = tiny
    b = HFRollout(policy, tok).generate(
        PROMPTS[:2], SamplingParams(temperature=0.0, n=2, max_new_tokens=8)
    )
    assert torch.equal(b.response_ids[0], b.response_ids[1])
    assert torch.all(b.sampler_logprobs == 0)
    _, logits = teacher_forced_logprobs(policy, b, temperature=1.0)
    mask = b.response_mask.bool()
    assert torch.equal(logits.argmax(-1)[mask], b.response_ids[mask])


@pytest.mark.parametrize("params", [SamplingParams(temperature=0.0), SamplingParams(),
                                    SamplingParams(top_k=3, top_p=0.9, temperature=0.7)])
def test_generation_config_has_no_ignored_flags(tiny, params):
    """transformers flags (and warns once per process about) knobs that the decoding mode
    ignores, e.g. a top-k under greedy decoding; strict validation turns that into an error."""
    policy, tok = tiny
    HFRollout(policy, tok)._generation_config(params).validate(strict=True)


def test_update_weights_loads_other_weights(tiny, tmp_path):
    policy, tok = tiny
    other_path = build_tiny_model(tmp_path / "other", seed=1)
    other, _, _ = load_policy_and_ref(other_path, need_ref=False)
    target, _, _ = load_policy_and_ref(build_tiny_model(tmp_path / "t", seed=0), need_ref=False)
    backend = HFRollout(target, tok)
    backend.update_weights(target)  # shared module: a no-op
    assert torch.equal(target.model.embed_tokens.weight, policy.model.embed_tokens.weight)
    backend.update_weights(other.state_dict())
    assert torch.equal(target.model.embed_tokens.weight, other.model.embed_tokens.weight)


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": 0}, "top_k"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"n": 0}, "n"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_sampling_params_validation_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=rf"SamplingParams\.{field}="):
        SamplingParams(**kwargs)


def test_rollout_batch_select_and_shape_check(batch):
    sub = batch.select([0, 9])
    assert sub.num_samples == 2 and sub.texts == [batch.texts[0], batch.texts[9]]
    assert torch.equal(sub.response_ids[1], batch.response_ids[9])
    with pytest.raises(ValueError, match="response_mask"):
        RolloutBatch(**{**batch.__dict__, "response_mask": batch.response_mask[:, :-1]})


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_rollout_matches_teacher_forcing_and_is_seeded(tiny_path):
    policy, _, tok = load_policy_and_ref(tiny_path, need_ref=False, device="cuda")
    backend = HFRollout(policy, tok, batch_size=2)
    params = SamplingParams(temperature=0.7, n=4, max_new_tokens=24, seed=5)
    a, b = backend.generate(PROMPTS, params), backend.generate(PROMPTS, params)
    assert a.response_ids.is_cuda and torch.equal(a.response_ids, b.response_ids)
    expected, _ = teacher_forced_logprobs(policy, a, temperature=0.7)
    mask = a.response_mask.bool()
    torch.testing.assert_close(a.sampler_logprobs[mask], expected[mask], atol=1e-4, rtol=0)


def test_prompt_cached_pass_matches_the_full_pass_and_runs_each_prompt_once(batch, tiny):
    """The no-grad scoring pass runs the 3 distinct prompts once (not 24 times), reuses their
    KV cache for the 8 responses each, runs the responses in chunks cut to their longest one,
    and gives the full pass's log-probs and entropies, also with the rows shuffled and with
    micro-batches that cut through groups."""
    import archer.trainer.logprobs as T

    policy, _ = tiny
    seen = []
    hook = policy.get_input_embeddings().register_forward_hook(
        lambda mod, args, out: seen.append(tuple(args[0].shape)))
    try:
        with torch.no_grad():
            full_lp, full_ent = T.forward_tokens(policy, batch, 0.7)
            seen.clear()
            lp, ent = T.forward_tokens_prompt_cached(policy, batch, 0.7)
    finally:
        hook.remove()
    n, r, p = batch.num_samples, batch.response_ids.shape[1], batch.prompt_length
    assert seen[0] == (3, p)  # the distinct prompts once, then the responses only
    lengths = batch.response_mask.sum(-1)
    chunks = T.length_chunks(lengths, n, overhead=n * r / 16)
    assert len(chunks) > 1 and seen[1:] == [(len(c), int(lengths[c].max()) - 1) for c in chunks]
    assert sum(rows * width for rows, width in seen[1:]) < n * (r - 1)  # padding skipped
    mask = batch.response_mask.bool()
    torch.testing.assert_close(lp[mask], full_lp[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(ent[mask], full_ent[mask], atol=1e-5, rtol=0)

    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    shuffled = batch.select(perm)
    lp_s, ent_s = T.forward_tokens_batched(policy, shuffled, 0.7, micro=5)
    torch.testing.assert_close(lp_s[mask[perm]], full_lp[perm][mask[perm]], atol=1e-5, rtol=0)
    torch.testing.assert_close(ent_s[mask[perm]], full_ent[perm][mask[perm]], atol=1e-5,
                               rtol=0)
    # One group per micro-batch: each prompt pass drops the left-pad columns (shorter prompts).
    widths = []  # prompt passes (use_cache=True): their widths
    hook = policy.register_forward_hook(
        lambda mod, args, kwargs, out: widths.append(kwargs["input_ids"].shape[1])
        if kwargs["use_cache"] else None, with_kwargs=True)
    try:
        lp_g, _ = T.forward_tokens_batched(policy, batch, 0.7, micro=8)
    finally:
        hook.remove()
    assert widths == [int(batch.prompt_mask[g * 8].sum()) for g in range(3)]
    assert min(widths) < p
    torch.testing.assert_close(lp_g[mask], full_lp[mask], atol=1e-5, rtol=0)
    # The prompt matters: the same responses after another group's prompt score otherwise.
    rolled = RolloutBatch(**{**vars(batch), "prompt_ids": batch.prompt_ids.roll(8, 0),
                             "prompt_mask": batch.prompt_mask.roll(8, 0)})
    with torch.no_grad():
        other = T.forward_tokens_prompt_cached(policy, rolled, 0.7)[0]
    assert (other[mask] - full_lp[mask]).abs().max() > 1e-2


def test_prompt_cache_falls_back_where_it_cannot_help(batch, tiny):
    """No repeated prompt, a one-token response, or gradients through a model that
    checkpoints its activations (HF turns its cache off): None (the caller runs the full
    pass); ``forward_tokens_batched`` then still returns the full pass."""
    import copy

    import archer.trainer.logprobs as T
    from archer.trainer import enable_gradient_checkpointing

    policy, _ = tiny
    one_per_prompt = batch.select([0, 8, 16])
    with torch.no_grad():
        assert T.forward_tokens_prompt_cached(policy, one_per_prompt, 0.7) is None
        short = RolloutBatch(**{**vars(batch), "response_ids": batch.response_ids[:, :1],
                                "response_mask": batch.response_mask[:, :1],
                                "response_lengths": batch.response_mask[:, :1].sum(-1),
                                "sampler_logprobs": batch.sampler_logprobs[:, :1]})
        assert T.forward_tokens_prompt_cached(policy, short, 0.7) is None
        expected = T.forward_tokens(policy, one_per_prompt, 0.7)[0]
    checkpointed = copy.deepcopy(policy).train()
    enable_gradient_checkpointing(checkpointed)
    assert T.forward_tokens_prompt_cached(checkpointed, batch, 0.7) is None
    # without gradients, transformers >= 5.24 keeps the cache and older versions drop it:
    # either way the no-grad pass is the full pass
    full = T.forward_tokens(policy, batch, 0.7)[0].detach()
    got = T.forward_tokens_batched(checkpointed, batch, 0.7, micro=batch.num_samples)[0]
    torch.testing.assert_close(got[batch.response_mask.bool()],
                               full[batch.response_mask.bool()], atol=1e-5, rtol=0)
    got = T.forward_tokens_batched(policy, one_per_prompt, 0.7, micro=8)[0]
    assert torch.equal(got, expected)


def test_length_chunks_minimise_padding_plus_overhead():
    """Hand-computed: lengths 10, 9, 2, 1 (given as 2, 10, 1, 9), overhead 5 per chunk:
    one chunk costs 4*10+5 = 45, {10,9}{2,1} 20+5+4+5 = 34, {10}{9}{2,1} 38, {10,9,2}{1} 41;
    the best is {10,9}{2,1}. Overhead 20: one chunk (60 < 64). One row per chunk at most:
    four chunks, longest first."""
    from archer.trainer import length_chunks

    lengths = torch.tensor([2, 10, 1, 9])
    as_lists = lambda chunks: [c.tolist() for c in chunks]  # noqa: E731
    assert as_lists(length_chunks(lengths, 4, overhead=5)) == [[1, 3], [0, 2]]
    assert as_lists(length_chunks(lengths, 4, overhead=20)) == [[1, 3, 0, 2]]
    assert as_lists(length_chunks(lengths, 1, overhead=0)) == [[1], [3], [0], [2]]
    assert as_lists(length_chunks(lengths, 2, overhead=20)) == [[1, 3], [0, 2]]
    assert length_chunks(torch.tensor([], dtype=torch.long), 4, overhead=1) == []


def test_gpu_chunks_only_cut_a_long_tail():
    """The per-chunk overhead follows the device (:func:`chunk_overhead`): 1/16 of the
    micro-batch's padded tokens on the CPU, 1/2 on a GPU. Hand-computed, 8 rows, R=32.
    Lengths 32, 30, ..., 18: on a GPU (overhead 128) one chunk costs 8*32+128 = 384, the best
    two 4*32+4*24+256 = 480, so one chunk; on the CPU (overhead 16) two chunks (256) beat one
    (272). Lengths 32 and seven 2s: on a GPU one chunk costs 384, {32}{2 x7} 32+14+256 = 302,
    so the long response gets its own chunk."""
    from archer.trainer import chunk_overhead, length_chunks

    assert chunk_overhead(torch.device("cpu")) == 1 / 16
    assert chunk_overhead(torch.device("cuda")) == chunk_overhead(torch.device("cuda", 1)) == 0.5
    n, r = 8, 32
    cuda = n * r * chunk_overhead(torch.device("cuda"))
    cpu = n * r * chunk_overhead(torch.device("cpu"))
    assert (cuda, cpu) == (128, 16)
    even = torch.arange(32, 16, -2)
    assert [len(c) for c in length_chunks(even, n, overhead=cuda)] == [8]
    assert len(length_chunks(even, n, overhead=cpu)) > 1
    tail = torch.tensor([2, 2, 2, 32, 2, 2, 2, 2])
    assert [c.tolist() for c in length_chunks(tail, n, overhead=cuda)] == [[3], [0, 1, 2, 4, 5, 6, 7]]


# Tiny configs of the architectures RLVR runs start from: Qwen2 (DeepSeek-R1-Distill-Qwen,
# the paper's base model), Qwen3, Mistral and Gemma 2 with a sliding window shorter than the
# sequences (Gemma 2 also soft-caps its logits), GPT-2 (learned absolute positions), GPT-NeoX
# and DeepSeek-V3 (latent attention, mixture of experts). Each is built from its config with
# random weights: nothing is downloaded.
_LAYERS = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
ARCHITECTURES = {
    "qwen2": ("Qwen2Config", _LAYERS),
    "qwen3": ("Qwen3Config", {**_LAYERS, "head_dim": 16}),
    "mistral_sliding_window": ("MistralConfig", {**_LAYERS, "sliding_window": 8}),
    "gemma2": ("Gemma2Config", {**_LAYERS, "head_dim": 16, "sliding_window": 8}),
    "gpt2": ("GPT2Config", dict(n_embd=64, n_layer=2, n_head=4, n_positions=512)),
    "gpt_neox": ("GPTNeoXConfig", dict(hidden_size=64, intermediate_size=128,
                                       num_hidden_layers=2, num_attention_heads=4,
                                       max_position_embeddings=512)),
    "deepseek_v3": ("DeepseekV3Config", {
        **_LAYERS, "num_key_value_heads": 4, "n_routed_experts": 4, "num_experts_per_tok": 2,
        "moe_intermediate_size": 32, "first_k_dense_replace": 1, "q_lora_rank": None,
        "kv_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8, "v_head_dim": 16,
        "n_group": 1, "topk_group": 1}),
}


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_other_architectures_score_what_they_sampled_with_and_without_the_prompt_cache(
        arch, tiny):
    """Beyond Llama: with left-padded prompts, the trainer's teacher-forced pass gives the
    sampler's log-probs, and the prompt-cached pass (KV cache per distinct prompt, responses
    in length chunks) gives the full pass's log-probs and entropies, and with gradients its
    parameter gradients."""
    import transformers

    import archer.trainer.logprobs as T

    _, tok = tiny
    name, kwargs = ARCHITECTURES[arch]
    config_class = getattr(transformers, name, None)
    if config_class is None:
        pytest.skip(f"transformers {transformers.__version__} has no {name}")
    torch.manual_seed(0)
    config = config_class(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                          **kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.pad_token_id = tok.pad_token_id
    assert T.cache_kwarg(type(model)) is not None  # the cached pass really runs
    batch = HFRollout(model, tok, batch_size=3).generate(
        PROMPTS, SamplingParams(temperature=0.7, n=4, max_new_tokens=24, seed=3))
    assert batch.prompt_length > 8  # longer than the sliding windows above
    mask = batch.response_mask.bool()
    with torch.no_grad():
        full_lp, full_ent = T.forward_tokens(model, batch, 0.7)
        cached = T.forward_tokens_prompt_cached(model, batch, 0.7)
    assert cached is not None
    torch.testing.assert_close(batch.sampler_logprobs[mask], full_lp[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(cached[0][mask], full_lp[mask], atol=1e-5, rtol=0)
    torch.testing.assert_close(cached[1][mask], full_ent[mask], atol=1e-5, rtol=0)
    # with gradients (the update): the same loss, the same parameter gradients
    weights = torch.randn(batch.response_ids.shape, generator=torch.Generator().manual_seed(1))

    def gradients(forward):
        model.zero_grad()
        (forward(model, batch, 0.7)[0] * weights * mask).sum().backward()
        return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}

    full_g, cached_g = gradients(T.forward_tokens), gradients(T.forward_tokens_prompt_cached)
    assert full_g.keys() == cached_g.keys() and len(full_g) > 5
    for k in full_g:
        scale = full_g[k].abs().max().item()
        torch.testing.assert_close(cached_g[k], full_g[k], atol=1e-5 * scale + 1e-9, rtol=0,
                                   msg=k)


def test_prompts_are_prefilled_once_for_their_n_samples(tiny):
    """With n samples per prompt, the first P-1 prompt tokens run once per prompt (not n
    times) and ``generate`` starts at the last prompt token; the samples and their log-probs
    are those of the full prefill (same seed). n = 1 and ``share_prompts=False`` prefill as
    before."""
    policy, tok = tiny
    params = SamplingParams(temperature=0.7, n=8, max_new_tokens=24, seed=3)
    calls = []
    hook = policy.register_forward_hook(
        lambda mod, args, kwargs, out: calls.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True)
    try:
        plain = HFRollout(policy, tok, batch_size=2, share_prompts=False).generate(PROMPTS,
                                                                                   params)
        plain_calls, calls[:] = list(calls), []
        shared = HFRollout(policy, tok, batch_size=2).generate(PROMPTS, params)
        shared_calls, calls[:] = list(calls), []
        HFRollout(policy, tok, batch_size=2).generate(PROMPTS, replace(params, n=1))
        single_calls = list(calls)
    finally:
        hook.remove()
    widths = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in PROMPTS]
    p01, p2 = max(widths[:2]), widths[2]  # the two micro-batches' prompt widths
    assert plain_calls[0] == (16, p01) and (8, p2) in plain_calls
    assert shared_calls[:2] == [(2, p01 - 1), (16, 1)]  # prefill 2 prompts, then decode
    assert (1, p2 - 1) in shared_calls and (8, p2) not in shared_calls
    assert single_calls[0] == (2, p01)  # one sample each: nothing to share
    assert torch.equal(shared.response_ids, plain.response_ids)
    torch.testing.assert_close(shared.sampler_logprobs, plain.sampler_logprobs, atol=1e-5,
                               rtol=0)
