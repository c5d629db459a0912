"""``archer eval``: generate -> samples.jsonl (resumable) -> score -> results.json -> MLflow.

    archer eval --model DIR --benchmarks aime2024,lcb_v5 --k 8 --max-new-tokens 2048
    archer eval --model smollm2-135m --benchmarks gsm8k --limit 100 --k 4 --max-new-tokens 256
    archer eval --engine vllm --model DIR --benchmarks aime2024 --k 64   # the vllm extra
    archer eval --score-only --out-dir runs/eval/x        # re-score existing samples
    archer eval --compare runs/eval/a/gsm8k runs/eval/b/gsm8k [--force]

Contract fields not given keep the paper's values (ARCHER.md section 5); every flag that
changes one is recorded in the contract's ``overrides``. Output per benchmark:
``<out-dir>/<benchmark>/{samples.jsonl, scores.jsonl, per_problem.csv, results.json}``.

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

BENCHMARK_NAMES = ("aime2024, aime2025, amc23, math500, gsm8k, lcb_v5, lcb_v6, humaneval, "
                   "mbpp_plus, gym")


def add_eval_arguments(p: argparse.ArgumentParser, func) -> None:
    p.add_argument("--model", help="HF model directory or a prepared name (tiny, smollm2-135m)")
    p.add_argument("--benchmarks", default="gsm8k",
                   help=f"comma-separated, from: {BENCHMARK_NAMES}")
    p.add_argument("--k", type=int, default=None, help="samples per problem (paper: per bench)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="paper: 32768")
    p.add_argument("--temperature", type=float, default=None, help="paper: 0.8")
    p.add_argument("--top-p", type=float, default=None, help="paper: 1.0")
    p.add_argument("--limit", type=int, default=None, help="first N problems only")
    p.add_argument("--seed", type=int, default=None, help="sampling seed (default 0)")
    p.add_argument("--template", default=None, help="prompt template override")
    p.add_argument("--lcb-start", default=None, help="LiveCodeBench window start (inclusive)")
    p.add_argument("--lcb-end", default=None, help="LiveCodeBench window end (exclusive)")
    p.add_argument("--test-timeout", type=float, default=None,
                   help="code: per-test timeout in s (default 6, as LiveCodeBench)")
    p.add_argument("--data-file", default=None,
                   help="read this file instead of the registered one (one benchmark only), "
                        "e.g. an official LiveCodeBench release")
    p.add_argument("--gym-data", default=None, metavar="JSON",
                   help='benchmark gym: the reasoning-gym data config whose held-out split is '
                        'evaluated, e.g. \'{"task": "chain_sum", "size": 1000, "seed": 0, '
                        '"val_size": 64, "task_config": {"min_terms": 2}}\' (as in training)')
    p.add_argument("--out-dir", default=None, help="default: runs/eval/<model name>")
    p.add_argument("--engine", default="hf", choices=("hf", "vllm", "lm-eval"),
                   help="hf: transformers generate; vllm: archer's vLLM backend (the vllm "
                        "extra); lm-eval: lm-evaluation-harness")
    p.add_argument("--batch-size", type=int, default=8, help="problems per generate call")
    p.add_argument("--device", default="auto",
                   help="engines hf and lm-eval: auto (CUDA when torch sees a GPU, else the "
                        "CPU), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="--engine vllm: share of accelerator memory vLLM may use")
    p.add_argument("--workers", type=int, default=None, help="grader worker processes")
    p.add_argument("--tracking", default="mlflow", choices=("mlflow", "none"))
    p.add_argument("--tracking-uri", default=None, help="default: sqlite:///runs/mlflow.db")
    p.add_argument("--parent-run-id", default=None,
                   help="nest the eval run under this MLflow run (default: the training run "
                        "whose directory holds --model, if any)")
    p.add_argument("--scorer", default="archer", choices=("archer", "evalplus"),
                   help="archer: our verifiers; evalplus: evalplus's evaluator, sandboxed "
                        "(humaneval, mbpp_plus; results in <out-dir>/<bench>/evalplus; with "
                        "--data-file a HumanEval+ file for the plus tests)")
    p.add_argument("--score-only", action="store_true",
                   help="do not generate: re-score the samples already in --out-dir")
    p.add_argument("--compare", nargs=2, metavar=("A", "B"), default=None,
                   help="paired comparison of two result dirs/files (A - B)")
    p.add_argument("--force", action="store_true", help="compare despite contract differences")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="progress bar (default: on a terminal)")
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
    names = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    for name in names:
        BENCHMARKS.get(name)  # unknown names fail listing the options
    if args.data_file and len(names) != 1:
        raise ValueError("--data-file needs exactly one benchmark")
    if not args.score_only and not args.model:
        raise ValueError("--model is required (unless --score-only or --compare)")
    out_dir = Path(args.out_dir or Path("runs/eval") / Path(str(args.model)).name)
    from archer.train_config import check_out_dir

    check_out_dir("--out-dir", str(out_dir), "output directory")  # before any model loads
    for name in names:  # each benchmark's folder, and its samples file, of the right kind too
        check_out_dir("--out-dir", str(out_dir / name), f"output directory ({name})")
        if (out_dir / name / "samples.jsonl").is_dir():
            raise ValueError(f"{out_dir / name / 'samples.jsonl'} is a directory, not the "
                             "samples file; move it away or choose another --out-dir")
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

        args.device = resolve_device(args.device, "--device")
    if args.scorer == "evalplus":
        from evals.evalplus_adapter import EVALPLUS_DATASETS

        other = [n for n in names if n not in EVALPLUS_DATASETS]
        if other:
            raise ValueError(f"--scorer evalplus scores {sorted(EVALPLUS_DATASETS)}, not "
                             f"{other}")
    if args.engine == "lm-eval":
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
                            gpu_memory_utilization=args.gpu_memory_utilization)
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
    """``--gym-data`` parsed for the ``gym`` benchmark (None for the others)."""
    from evals.registry import BENCHMARKS, GYM_SOURCE

    if BENCHMARKS.get(name).source != GYM_SOURCE:
        return None
    if not args.gym_data:
        raise ValueError("benchmark gym needs --gym-data JSON: the reasoning-gym task, size, "
                         "seed, val_size and task_config it was trained on")
    try:
        data = json.loads(args.gym_data)
    except json.JSONDecodeError as e:
        raise ValueError(f"--gym-data is not valid JSON ({e}): {args.gym_data!r}") from None
    if not isinstance(data, dict):
        raise ValueError(f"--gym-data must be a JSON object, got {args.gym_data!r}")
    return data


def summary_line(res: dict[str, Any]) -> str:
    m = res["metrics"]
    n = m["n_samples_max"]
    avg, lo, hi = m[f"avg_at_{n}"], m[f"avg_at_{n}_ci_low"], m[f"avg_at_{n}_ci_high"]
    extra = f" pass@{n}={100 * m[f'pass_at_{n}']:.1f}"
    if f"maj_at_{n}" in m:
        extra += f" maj@{n}={100 * m[f'maj_at_{n}']:.1f}"
    label = f" [{res['label']}]" if res.get("label") else ""
    return (f"{res['benchmark']}: avg@{n}={100 * avg:.1f}% (95% CI {100 * lo:.1f}-"
            f"{100 * hi:.1f}){extra} over {m['n_problems']} problems, "
            f"contract {res['contract_hash']}{label}")
