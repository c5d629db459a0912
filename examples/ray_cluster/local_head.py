"""A Ray head node on this machine for the CPU form of the example, and its teardown.

    python examples/ray_cluster/local_head.py start DIR NUM_CPUS   # prints the address
    python examples/ray_cluster/local_head.py stop DIR

``start`` runs ``ray start --head`` with DIR as its temp dir and free ports; ``stop`` ends
exactly the processes of that head (their command line names DIR or its GCS port, and their
descendants) and removes DIR. Never ``ray stop``: that stops every Ray on the machine.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start(temp: Path, num_cpus: int) -> str:
    """Start the head; return its address (what ``ray.address=`` takes)."""
    temp.mkdir(parents=True, exist_ok=True)
    port, client, dashboard, a, b, c, d = free_ports(7)
    (temp / "gcs_port").write_text(str(port))
    cmd = [*RAY, "start", "--head", f"--port={port}", f"--num-cpus={num_cpus}",
           f"--temp-dir={temp}", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
           "--include-dashboard=false", f"--dashboard-port={dashboard}",
           f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={a}",
           f"--dashboard-agent-grpc-port={b}", f"--runtime-env-agent-port={c}",
           f"--metrics-export-port={d}"]
    env = os.environ | {"RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=180)
    if done.returncode:
        raise SystemExit(f"ray start failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    current = temp / "ray_current_cluster"  # Ray may advertise another address; it says which
    return current.read_text().strip() if current.is_file() else f"127.0.0.1:{port}"


def head_pids(temp: Path) -> set[int]:
    """The head's processes (command line naming ``temp`` or its GCS port) and descendants."""
    port_file = temp / "gcs_port"
    return marked_pids([str(temp)] + ([f":{port_file.read_text()}"] if port_file.is_file()
                                      else []))


def marked_pids(marks: list[str]) -> set[int]:
    """The processes whose command line contains one of ``marks`` (a port mark ``":N"``
    matches at the end of an argument), and their descendants; never this process."""
    marks = [m + "\0" if m.startswith(":") else m for m in marks]
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry)] = (ppid, cmd + "\0")
    hit = {p for p, (_, cmd) in table.items()
           if p != os.getpid() and any(m in cmd for m in marks)}
    grew = True
    while grew:
        grew = False
        for pid, (ppid, _) in table.items():
            if ppid in hit and pid not in hit:
                hit.add(pid)
                grew = True
    return hit


def stop(temp: Path) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in head_pids(temp):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 8
        while time.monotonic() < deadline and head_pids(temp):
            time.sleep(0.2)
    shutil.rmtree(temp, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in ("start", "stop"):
        raise SystemExit(__doc__)
    if sys.argv[1] == "start":
        print(start(Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 2))
    else:
        stop(Path(sys.argv[2]))
