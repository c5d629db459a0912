"""Test harness that :class:`archer.rewards.code.CodeGrader` runs inside the sandbox.

The harness is one script, :data:`HARNESS`: the parts of this package (:data:`PARTS`, in that
order) joined into a single text.  Run as ``python -I -S -c <HARNESS> <results-fd> <secret-fd>``
(or its marshalled bytecode ahead of the spec on stdin, see :func:`harness_invocation`), the
public spec (JSON) on stdin.  Standard library only: it runs under the base interpreter,
without the project or site-packages; each part imports the names of earlier parts only when
imported on the host (``if __name__ != "__main__"``), where the parts are ordinary modules.
``python -m archer.rewards.code.harness`` prints the script (e.g. to run it by hand).
Two kinds of process:

* **P**, this process, the *judge*.  It never executes candidate code.  It writes the
  protocol records (JSON lines, each carrying the run's nonce) to the results fd, which only it
  holds.  It makes itself non-dumpable, so no other process of the sandbox can open its
  ``/proc/<pid>/fd``, ``/proc/<pid>/mem`` or attach to it.
* **W**, a worker forked by P, which runs the candidate program.  Before any candidate code
  runs W closes every descriptor but its stdio (private memfds) and its two pipes to P, asks to
  be killed when P dies, drops every capability (and, when asked, switches to ``nobody``), sets
  ``no_new_privs`` and installs a seccomp filter: no new processes (threads are fine), no
  signals to any process but itself, no ptrace / process_vm / pidfd, no setsid/setpgid, no
  sockets other than AF_UNIX, no io_uring, no namespaces, no SysV/POSIX IPC objects or
  keyrings (they would outlive W).  W's answers travel to P as data
  (tagged JSON decoded by P into fresh plain objects), so nothing W does in its own interpreter
  (patched builtins, ``__eq__``, ``sys.exit``, fake prints) can reach P's verdict.

Per kind:

* ``stdin``: one fresh W per test, stdin/stdout/stderr are memfds; P reads the output after W
  exits and reports it; the *host* compares it with the expected output (never sent here).
* ``functional``: one W loads the program; per test P sends the input lines, W returns
  ``json.dumps`` of the result; the host compares (type-strict) with the expected output.
* ``check``: one W loads the program and evaluates the entry expression (``Solution().fn``,
  HumanEval's entry point); P runs the ``check`` code itself with a proxy ``candidate`` whose
  calls are forwarded to W.  W is forked *before* P reads the test code and the nonce from
  the secret fd, so W's memory holds neither.

Warm sandboxes run this with ``--zygote`` instead: a long-lived process that forks one P per
program (see :mod:`~archer.rewards.code.harness.zygote`), the P and its first W forked ahead
of the program.
"""

from __future__ import annotations

import importlib.util
import marshal
import subprocess
import threading
from pathlib import Path

#: the harness's parts (modules of this package), in the order they are joined
PARTS = ("codec", "lockdown", "worker", "judge", "zygote", "entry")
_FUTURE = "from __future__ import annotations\n"


def harness_source() -> str:
    """The harness script: the first part as it is, then each later one without its
    ``from __future__`` import (only the first statement of a script may be one; the first
    part's applies to all)."""
    texts = [Path(__file__).with_name(f"{part}.py").read_text(encoding="utf-8") for part in PARTS]
    for part, text in zip(PARTS, texts):
        if _FUTURE not in text:
            raise RuntimeError(f"harness part {part}.py lacks {_FUTURE.strip()!r}")
    return texts[0] + "".join("\n\n" + text.replace(_FUTURE, "", 1) for text in texts[1:])


#: the harness script, run with ``python -I -S -c`` in the sandbox
HARNESS = harness_source()
#: reads the harness as marshalled bytecode from stdin (``<length>\\n<bytes>``), then runs it:
#: saves compiling ~900 lines in every sandbox
_BOOT = "import marshal,sys;b=sys.stdin.buffer;exec(marshal.loads(b.read(int(b.readline()))))"
_MAGIC: dict[str, str] = {}
_MAGIC_LOCK = threading.Lock()


def _bytecode_magic(python: str) -> str:
    """``importlib.util.MAGIC_NUMBER`` of ``python`` (hex; "" if it cannot be asked)."""
    with _MAGIC_LOCK:
        if python not in _MAGIC:
            try:
                out = subprocess.run(
                    [python, "-I", "-S", "-c", "import importlib.util as u, sys; "
                     "sys.stdout.write(u.MAGIC_NUMBER.hex())"],
                    capture_output=True, timeout=30, env={"PATH": "/usr/bin:/bin"},
                ).stdout.decode()
            except (OSError, subprocess.SubprocessError):
                out = ""
            _MAGIC[python] = out.strip()
        return _MAGIC[python]


def harness_invocation(python: str, site_packages: bool = False,
                       packages_dir: str | None = None) -> tuple[list[str], bytes]:
    """(interpreter arguments, stdin prefix) that run the harness in ``python``: its
    marshalled bytecode when ``python`` has this interpreter's bytecode format, else the
    source.  ``packages_dir`` (the sandbox's shipped packages) goes first on ``sys.path``; it
    is used only in the first case, where ``python`` is this interpreter's version and so can
    load the packages this interpreter has installed."""
    flags = [] if site_packages else ["-S"]
    if _bytecode_magic(python) == importlib.util.MAGIC_NUMBER.hex():
        blob = marshal.dumps(compile(HARNESS, "<archer-harness>", "exec"))
        boot = _BOOT if packages_dir is None else _BOOT.replace(
            "import marshal,sys;", f"import marshal,sys;sys.path.insert(0,{packages_dir!r});", 1)
        return flags + ["-c", boot], str(len(blob)).encode() + b"\n" + blob
    return flags + ["-c", HARNESS], b""
