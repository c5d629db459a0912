"""Every example in examples/ runs in its CPU form (``run.sh --cpu``), as a user would run
it: bash, the ``archer`` CLI of this checkout, outputs in a temp dir, no network."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def _results(out: Path, benchmark: str) -> dict:
    return json.loads((out / "eval" / benchmark / "results.json").read_text())


def check_single_gpu_math(out: Path) -> None:
    assert (out / "train" / "final" / "config.json").is_file()
    assert (out / "best" / "config.json").is_file()  # the export of the best step
    res = _results(out, "math500")
    assert res["metrics"]["n_problems"] == 2 and res["model"] == str(out / "best")


def check_multi_gpu_code(out: Path) -> None:
    assert (out / "best" / "config.json").is_file()
    tags = json.loads((out / "train" / "tags.json").read_text())
    assert tags["archer.num_devices"] == 2  # two data-parallel processes trained it
    assert json.loads((out / "train" / "params.json").read_text())["distributed.backend"] == \
        "gloo"
    assert _results(out, "lcb_v5")["metrics"]["n_problems"] == 2


def check_ray_cluster(out: Path) -> None:
    state = json.loads((out / "studies" / "baselines" / "study.json").read_text())
    assert state["status"] == "finished"
    assert [t["status"] for t in state["trials"].values()] == ["finished"]
    assert [t["step"] for t in state["trials"].values()] == [2]


def check_eval_hub_checkpoint(out: Path) -> None:
    for bench in ("aime2024", "lcb_v5"):
        res = _results(out, bench)
        assert res["metrics"]["n_problems"] == 2 and res["engine"] == "hf"


CHECKS = {"single_gpu_math": check_single_gpu_math, "multi_gpu_code": check_multi_gpu_code,
          "ray_cluster": check_ray_cluster, "eval_hub_checkpoint": check_eval_hub_checkpoint}


def example_dirs() -> list[str]:
    return sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir() and p.name != "__pycache__")


def test_every_example_has_a_readme_a_run_script_with_a_cpu_form_and_a_check():
    assert example_dirs() == sorted(CHECKS), "an example without a CPU-form test (or a " \
        "test without its example): add it to CHECKS"
    for name in example_dirs():
        readme = (EXAMPLES / name / "README.md").read_text()
        script = (EXAMPLES / name / "run.sh").read_text()
        assert '"${1:-}" == "--cpu"' in script, f"{name}/run.sh has no --cpu form"
        assert "## CPU form" in readme and "run.sh --cpu" in readme, name
        words = " ".join(readme.replace("*", "").split()).lower()
        assert "not yet run on a gpu" in words, f"{name}: say that the GPU form is unrun"
        assert f"({name}/README.md)" in (EXAMPLES / "README.md").read_text(), name
        assert f"| `{name}` |" in (ROOT / "docs" / "examples.md").read_text(), name


def run_cpu_form(name: str, out: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    env = os.environ | {"PYTHON": sys.executable, "OUT": str(out), "PYTHONPATH": str(ROOT),
                        "ARCHER_CACHE_DIR": str(out / "archer-cache"),
                        "MLFLOW_TRACKING_URI": f"sqlite:///{out / 'mlflow-default.db'}"}
    env.pop("RAY_ADDRESS", None)
    # its own session and a clean working directory (a ray/ folder there would shadow Ray);
    # on a timeout the whole tree is stopped, SIGTERM first so the script's traps run
    proc = subprocess.Popen(["bash", str(EXAMPLES / name / "run.sh"), "--cpu"], cwd=out,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        stdout, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            stdout, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            stdout, _ = proc.communicate()
        pytest.fail(f"{name} --cpu timed out after {timeout} s:\n{stdout[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, "")


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHECKS))
def test_the_cpu_form_of_each_example_runs(name, tmp_path):
    if not os.environ.get("ARCHER_DATA_DIR"):
        pytest.skip("the examples read the offline data sets: set ARCHER_DATA_DIR")
    out = tmp_path / name
    out.mkdir()
    done = run_cpu_form(name, out)
    assert done.returncode == 0, f"{name} --cpu exited {done.returncode}:\n{done.stdout[-4000:]}"
    CHECKS[name](out)
