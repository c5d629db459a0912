"""``archer eval``: generate -> samples.jsonl (resumable) -> score -> results.json -> MLflow.

    archer eval model=DIR benchmarks=aime2024,lcb_v5 k=8 max_new_tokens=2048
    archer eval model=smollm2-135m benchmarks=gsm8k limit=100 k=4 max_new_tokens=256
    archer eval engine=vllm model=DIR benchmarks=aime2024 k=64   # the vllm extra
    archer eval --score-only out_dir=runs/eval/x        # re-score existing samples
    archer eval --compare runs/eval/a/gsm8k runs/eval/b/gsm8k [force=true]

Contract fields not given keep the paper's values (docs/method.md, the evaluation section);
every setting that changes one is recorded in the contract's ``overrides``. Output per
benchmark: ``<out_dir>/<benchmark>/{samples.jsonl, scores.jsonl, per_problem.csv,
results.json}``. The old ``--flag`` spellings (``--model DIR``) still work for one release.

Ctrl-C or SIGTERM stops at once with one line on stderr (the samples kept, per benchmark)
and exit code 130 / 143; the samples of every finished chunk stay, the same command resumes
from them, and an MLflow run it had opened ends KILLED.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from archer.cli_settings import Setting, add_settings
from archer.extras import require
from evals.summary import summary_line

__all__ = ["EVAL_SETTINGS", "add_eval_arguments", "run_eval", "summary_line"]

BENCHMARK_NAMES = ("aime2024, aime2025, amc23, math500, gsm8k, lcb_v5, lcb_v6, humaneval, "
                   "mbpp_plus, gym")

EVAL_SETTINGS = (
    Setting("model", help="HF model directory or a prepared name (tiny, smollm2-135m)",
            deprecated=("--model",)),
    Setting("recipe", help="take benchmarks, k, lengths, engine and dtype from this "
            "recipe's eval spec (experiments/conf/recipe); typed settings win"),
    Setting("benchmarks", ["gsm8k"], "list", f"from: {BENCHMARK_NAMES}",
            deprecated=("--benchmarks",)),
    Setting("k", None, "int", "samples per problem (paper: per benchmark)", lo=1,
            deprecated=("--k",)),
    Setting("max_new_tokens", None, "int", "paper: 32768", lo=1,
            deprecated=("--max-new-tokens",)),
    Setting("temperature", None, "float", "paper: 0.8", lo=0, deprecated=("--temperature",)),
    Setting("top_p", None, "float", "paper: 1.0", lo=0, deprecated=("--top-p",)),
    Setting("limit", None, "int", "first N problems only", lo=1, deprecated=("--limit",)),
    Setting("seed", None, "int", "sampling seed (default 0)", lo=0, deprecated=("--seed",)),
    Setting("template", help="prompt template override", deprecated=("--template",)),
    Setting("lcb_start", help="LiveCodeBench window start (inclusive)",
            deprecated=("--lcb-start",)),
    Setting("lcb_end", help="LiveCodeBench window end (exclusive)", deprecated=("--lcb-end",)),
    Setting("test_timeout", None, "float", "code: per-test timeout in s (default 6, as "
            "LiveCodeBench)", lo=0, deprecated=("--test-timeout",)),
    Setting("data_file", help="read this file instead of the registered one (one benchmark "
            "only), e.g. an official LiveCodeBench release", deprecated=("--data-file",)),
    Setting("gym_data", help='benchmark gym: the reasoning-gym data config (JSON) whose '
            'held-out split is evaluated, e.g. \'gym_data={"task": "chain_sum", "size": 1000, '
            '"seed": 0, "val_size": 64}\' (as in training)', deprecated=("--gym-data",)),
    Setting("out_dir", help="output directory (default: runs/eval/<model name>)",
            deprecated=("--out-dir",)),
    Setting("engine", "hf", choices=("hf", "vllm", "lm-eval"),
            help="hf: transformers generate; vllm: archer's vLLM backend (the vllm extra); "
                 "lm-eval: lm-evaluation-harness", deprecated=("--engine",)),
    Setting("batch_size", 8, "int", "problems per generate call", lo=1,
            deprecated=("--batch-size",)),
    Setting("device", "auto", help="engines hf and lm-eval: auto (CUDA when torch sees a GPU, "
            "else the CPU), cpu, cuda or cuda:N", deprecated=("--device",)),
    Setting("dtype", "float32", deprecated=("--dtype",)),
    Setting("gpu_memory_utilization", 0.9, "float", "engine=vllm: share of accelerator "
            "memory vLLM may use", lo=0, deprecated=("--gpu-memory-utilization",)),
    Setting("vllm_tensor_parallel_size", 1, "int", "engine=vllm: GPUs the model is sharded "
            "over (as the trainer's key)", lo=1),
    Setting("vllm_max_model_len", None, "int", "engine=vllm: context length (default: the "
            "model's own; as the trainer's key)", lo=1),
    Setting("workers", None, "int", "grader worker processes", lo=1, deprecated=("--workers",)),
    Setting("tracking", "mlflow", choices=("mlflow", "none"), help="log the results to MLflow",
            deprecated=("--tracking",)),
    Setting("tracking.uri", help="MLflow store (default: sqlite:///runs/mlflow.db)",
            deprecated=("--tracking-uri",)),
    Setting("parent_run_id", help="nest the eval run under this MLflow run (default: the "
            "training run whose directory holds the model, if any)",
            deprecated=("--parent-run-id",)),
    Setting("scorer", "archer", choices=("archer", "evalplus"),
            help="archer: our verifiers; evalplus: evalplus's evaluator, sandboxed "
                 "(humaneval, mbpp_plus; results in <out_dir>/<bench>/evalplus; with "
                 "data_file a HumanEval+ file for the plus tests)", deprecated=("--scorer",)),
    Setting("force", False, "bool", "--compare: compare despite contract differences",
            deprecated=("--force",)),
    Setting("progress", None, "bool", "progress bar (default: on a terminal)",
            deprecated=("--progress", "--no-progress")),
)


def add_eval_arguments(p: argparse.ArgumentParser, func) -> None:
    p.add_argument("--score-only", action="store_true",
                   help="do not generate: re-score the samples already in out_dir")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                   help="paired comparison of two result dirs/files (A - B)")
    add_settings(p, "eval", EVAL_SETTINGS)
    p.set_defaults(func=func)


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    return {"k": args.k, "max_new_tokens": args.max_new_tokens,
            "temperature": args.temperature, "top_p": args.top_p, "limit": args.limit,
            "seed": args.seed, "template": args.template, "lcb_start": args.lcb_start,
            "lcb_end": args.lcb_end, "test_timeout_s": args.test_timeout}


def run_eval(args: argparse.Namespace) -> int:
    from evals.registry import BENCHMARKS
    from evals.scoring import compare_results

    if args.compare:
        out = compare_results(args.compare[0], args.compare[1], force=args.force)
        print(json.dumps(out, indent=1))
        return 0
    names = list(args.benchmarks)
    for name in names:
        BENCHMARKS.get(name)  # unknown names fail listing the options
    if args.data_file and len(names) != 1:
        raise ValueError("data_file=... needs exactly one benchmark")
    if not args.score_only and not args.model:
        raise ValueError("model=... is required (unless --score-only or --compare)")
    out_dir = Path(args.out_dir or Path("runs/eval") / Path(str(args.model)).name)
    from archer.train_config import check_out_dir

    check_out_dir("out_dir", str(out_dir), "output directory")  # before any model loads
    for name in names:  # each benchmark's folder, and its samples file, of the right kind too
        check_out_dir("out_dir", str(out_dir / name), f"output directory ({name})")
        if (out_dir / name / "samples.jsonl").is_dir():
            raise ValueError(f"{out_dir / name / 'samples.jsonl'} is a directory, not the "
                             "samples file; move it away or choose another out_dir")
    try:
        with stop_on_signals():
            return _evaluate(args, names, out_dir)
    except EvalStopped as stopped:
        print(f"archer eval: {stopped}; {kept_after_stop(names, out_dir, args)}",
              file=sys.stderr)
        return 128 + stopped.signum  # the shell's convention for a signalled process


class EvalStopped(KeyboardInterrupt):
    """SIGINT or SIGTERM during ``archer eval`` (``signum`` says which)."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} received: evaluation stopped")
        self.signum = signum


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While active, SIGINT and SIGTERM raise :class:`EvalStopped` where the evaluation is:
    the samples already appended stay (each chunk is fsynced), the chunk under way is
    dropped, and the MLflow run, if one is open, ends KILLED (:func:`evals.tracking.log_eval`).
    Only the main thread may handle signals: elsewhere this does nothing."""
    import threading

    def handle(signum, frame) -> None:
        raise EvalStopped(signum)

    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, handle)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def kept_after_stop(names: list[str], out_dir: Path, args: argparse.Namespace) -> str:
    """What a stopped evaluation leaves in ``out_dir`` and what the same command does when
    run again (one line): every sample of a finished chunk is kept, and a rerun resumes from
    them (:func:`evals.runner.generate_samples`); scoring and MLflow logging run again."""
    from evals.runner import read_samples

    kept = []
    for name in names:
        path = out_dir / name / "samples.jsonl"
        if not path.is_file():
            continue
        try:
            sf = read_samples(path)
            total = sf.contract.n_problems * sf.contract.k
            kept.append(f"{len(sf.samples)} of {total} samples in {path}")
        except (ValueError, KeyError, TypeError, OSError):
            kept.append(f"{path} (unreadable)")
    if not kept:
        return "no samples had been written; run the same command again to start over"
    then = "scores them all" + (" and logs to MLflow" if args.tracking == "mlflow" else "")
    if args.score_only:
        return "kept " + ", ".join(kept) + f"; run the same command again: it {then}"
    return ("kept " + ", ".join(kept) + "; run the same command again to resume: it reuses "
            f"these samples, generates only the missing ones, then {then}")


def _evaluate(args: argparse.Namespace, names: list[str], out_dir: Path) -> int:
    """Generate (unless ``--score-only``), score and log ``names`` into ``out_dir``."""
    from evals.scoring import score_samples

    if not args.score_only:
        from archer.distributed import resolve_device

        args.device = resolve_device(args.device, "device")
    if args.scorer == "evalplus":  # a missing extra before any generation, not after it
        require("evalplus", "eval", "archer eval scorer=evalplus")
        from evals.evalplus_adapter import EVALPLUS_DATASETS

        other = [n for n in names if n not in EVALPLUS_DATASETS]
        if other:
            raise ValueError(f"scorer=evalplus scores {sorted(EVALPLUS_DATASETS)}, not "
                             f"{other}")
    if args.engine == "lm-eval":
        require("lm_eval", "eval", "archer eval engine=lm-eval")
        from evals.lm_eval_adapter import run_lm_eval

        results = run_lm_eval(args.model, names, out_dir, overrides=_overrides(args),
                              batch_size=args.batch_size, device=args.device,
                              dtype=args.dtype, workers=args.workers)
    else:
        results = []
        backend = tokenizer = None
        try:
            for name in names:
                bdir = out_dir / name
                if not args.score_only:
                    if backend is None:
                        from evals.runner import make_backend

                        backend, tokenizer = make_backend(
                            args.engine, args.model, batch_size=args.batch_size,
                            device=args.device, dtype=args.dtype,
                            gpu_memory_utilization=args.gpu_memory_utilization,
                            tensor_parallel_size=args.vllm_tensor_parallel_size,
                            max_model_len=args.vllm_max_model_len)
                    _generate(name, args, bdir, backend, tokenizer)
                if args.scorer == "evalplus":
                    from evals.evalplus_adapter import score_with_evalplus

                    res = score_with_evalplus(bdir / "samples.jsonl", bdir / "evalplus",
                                              dataset_path=args.data_file,
                                              parallel=args.workers or 2)
                    bdir = bdir / "evalplus"
                else:
                    res = score_samples(bdir / "samples.jsonl", data_file=args.data_file,
                                        workers=args.workers)
                res["_dir"] = str(bdir)
                results.append(res)
                print(summary_line(res), flush=True)
        finally:
            if backend is not None:
                backend.close()  # a vLLM engine's processes and memory
    if args.tracking == "mlflow" and results:
        from archer.tracking.eval_runs import find_parent_run, log_eval

        parent = args.parent_run_id or (find_parent_run(args.model) if args.model else None)
        run_id = log_eval(results, out_dir, tracking_uri=args.tracking_uri,
                          parent_run_id=parent, run_name=f"eval-{out_dir.name}")
        print(f"MLflow run {run_id}" + (f" (nested under {parent})" if parent else ""))
    return 0


def _generate(name: str, args: argparse.Namespace, bdir: Path, backend, tokenizer) -> None:
    from evals.registry import make_contract, problems_for
    from evals.runner import generate_samples

    contract = make_contract(name, tokenizer=tokenizer, data_file=args.data_file,
                             data_config=gym_data(name, args), **_overrides(args))
    problems = problems_for(contract, data_file=args.data_file)
    print(contract.describe(), file=sys.stderr, flush=True)
    stats = generate_samples(contract, problems, backend, bdir / "samples.jsonl",
                             tokenizer=tokenizer, batch_size=args.batch_size,
                             model=str(args.model), engine=args.engine,
                             progress=args.progress)
    print(f"{name}: {stats['generated']} samples generated, {stats['reused']} reused",
          file=sys.stderr, flush=True)


def gym_data(name: str, args: argparse.Namespace) -> dict[str, Any] | None:
    """``gym_data`` parsed for the ``gym`` benchmark (None for the others)."""
    from evals.registry import BENCHMARKS, GYM_SOURCE

    if BENCHMARKS.get(name).source != GYM_SOURCE:
        return None
    if not args.gym_data:
        raise ValueError("benchmark gym needs gym_data=JSON: the reasoning-gym task, size, "
                         "seed, val_size and task_config it was trained on")
    try:
        data = json.loads(args.gym_data)
    except json.JSONDecodeError as e:
        raise ValueError(f"gym_data is not valid JSON ({e}): {args.gym_data!r}") from None
    if not isinstance(data, dict):
        raise ValueError(f"gym_data must be a JSON object, got {args.gym_data!r}")
    return data
