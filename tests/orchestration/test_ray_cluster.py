"""The multi-node story on one machine: a Ray cluster started with ``ray start --head`` plus a
second node joined with ``ray start --address=...`` (a second raylet: a worker node), and a
study run by ``archer ablate ... --ray-address`` whose trials land on both nodes.

The cluster is the test's own: its temp dir, ports and token are fresh, and teardown stops
exactly the processes that carry its temp dir or GCS port (never ``ray stop``, which would
stop every Ray on the machine)."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from experiments.scheduler import StudyState
from experiments.study_cli import study_status
from experiments.trial import LOG

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def load_local_head():
    """examples/ray_cluster/local_head.py (a standalone script, not a package): its
    ``free_ports`` and ``marked_pids`` serve this test's cluster too."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "local_head", REPO / "examples" / "ray_cluster" / "local_head.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


local_head = load_local_head()
free_ports = local_head.free_ports


class LocalRayCluster:
    """``ray start`` head + worker nodes on this machine, in a temp dir of their own."""

    def __init__(self) -> None:
        pytest.importorskip("ray")
        # short: Ray's Unix socket paths live under it (at most 107 characters)
        self.temp = Path(tempfile.mkdtemp(prefix="archer-ray-"))
        token = self.temp / "auth_token"
        token.write_text(secrets.token_hex(32))
        pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        # every node, and the driver, use the cluster's token; trials import this checkout
        self.env = os.environ | {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token),
                                 "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": pythonpath}
        self.env.pop("RAY_ADDRESS", None)
        self.port: int | None = None
        self.address: str | None = None

    def _ray_start(self, *args: str) -> None:
        a, b, c, d = free_ports(4)  # the agents' ports: distinct for each node on one host
        cmd = [*RAY, "start", *args, "--node-ip-address=127.0.0.1", "--disable-usage-stats",
               f"--dashboard-agent-listen-port={a}", f"--dashboard-agent-grpc-port={b}",
               f"--runtime-env-agent-port={c}", f"--metrics-export-port={d}"]
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"

    def start_head(self, num_cpus: int, resources: dict[str, float]) -> str:
        self.port, client, dashboard = free_ports(3)
        self._ray_start("--head", f"--port={self.port}", f"--num-cpus={num_cpus}",
                        f"--resources={json.dumps(resources)}", f"--temp-dir={self.temp}",
                        "--include-dashboard=false", f"--dashboard-port={dashboard}",
                        f"--ray-client-server-port={client}")
        # Ray may advertise the host's address rather than 127.0.0.1; it says which
        current = self.temp / "ray_current_cluster"
        self.address = (current.read_text().strip() if current.is_file()
                        else f"127.0.0.1:{self.port}")
        return self.address

    def add_worker(self, name: str, num_cpus: int, resources: dict[str, float]) -> None:
        self._ray_start(f"--address={self.address}", f"--num-cpus={num_cpus}",
                        f"--resources={json.dumps(resources)}", f"--temp-dir={self.temp / name}")

    def nodes(self) -> dict[str, dict[str, float]]:
        """Alive node id -> its resources, asked from a separate driver."""
        code = (f"import json, ray; ray.init(address={self.address!r}, log_to_driver=False); "
                "print(json.dumps({n['NodeID']: n['Resources'] for n in ray.nodes() "
                "if n['Alive']}))")
        done = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-2000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    def pids(self) -> set[int]:
        """Processes of this cluster (their command line names its temp dir or GCS port) and
        their descendants (the workers raylets start)."""
        return local_head.marked_pids([str(self.temp)] + ([f":{self.port}"] if self.port
                                                          else []))

    def stop(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 8
            while time.monotonic() < deadline and self.pids():
                time.sleep(0.2)
        shutil.rmtree(self.temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster():
    c = LocalRayCluster()
    try:
        c.start_head(1, {"archer_head": 1, "archer_slot": 1})
        c.add_worker("worker1", 1, {"archer_worker": 1, "archer_slot": 1})
        yield c
    finally:
        c.stop()
        assert not c.pids(), "processes of the test's Ray cluster survived its teardown"


def test_study_trials_land_on_both_nodes_of_a_ray_cluster(cluster, tmp_path, write_study,
                                                           tiny_model, tiny_overrides):
    nodes = cluster.nodes()
    assert len(nodes) == 2
    head = next(n for n, res in nodes.items() if "archer_head" in res)
    worker = next(n for n, res in nodes.items() if "archer_worker" in res)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    root = tmp_path / "studies"
    # one CPU and one archer_slot per node, both trials at once, spread: one trial per node
    path = write_study(tmp_path, "cluster", axes={"algo": ["grpo", "dapo"]}, eval=False,
                       max_concurrent=2, register_best=False,
                       resources={"num_cpus": 1, "custom": {"archer_slot": 1},
                                  "strategy": "SPREAD"})
    cmd = [sys.executable, "-m", "archer_cli", "ablate", str(path),
           *tiny_overrides(tiny_model, steps=2), f"out_dir={root}", f"tracking.uri={uri}",
           f"ray.address={cluster.address}", "progress=false"]
    done = subprocess.run(cmd, cwd=REPO, env=cluster.env, capture_output=True, text=True,
                          timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    state = StudyState.load(root / "cluster" / "study.json")
    trials = state.shown()
    assert [t.status for t in trials] == ["finished", "finished"]
    assert {t.node_id for t in trials} == {head, worker}
    assert all(t.nodes == [t.node_id] and t.hostname == socket.gethostname() for t in trials)
    # the per-trial log, the MLflow run and `archer study status` say where each trial ran
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    status = study_status("cluster", root)
    for t in trials:
        assert f"node {t.node_id}" in (Path(t.out_dir) / LOG).read_text()
        tags = client.get_run(t.run_id).data.tags
        assert tags["archer.node_id"] == t.node_id and tags["archer.nodes"] == t.node_id
        assert tags["archer.node_ip"] == t.node_ip and t.node_ip
        assert f"{t.hostname}/{t.node_id[:8]}" in status
    assert " node " in status.splitlines()[1]
