"""A trial task stays cancellable when its Ray worker inherited an ignored SIGINT (a Ray
started from a background job: ``nohup ... &``, a CI runner): ``ray.cancel`` raises
KeyboardInterrupt through ``_thread.interrupt_main``, which does nothing while SIGINT is
ignored, so a study's Ctrl-C would never reach its trials."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CODE = """
import _thread, signal, time
signal.signal(signal.SIGINT, signal.SIG_IGN)  # as inherited from a background job
if {fix}:
    from experiments.scheduler import interruptible
    interruptible()
try:
    _thread.interrupt_main()  # what ray.cancel(force=False) does in the worker
    time.sleep(2)
    print("not interrupted")
except KeyboardInterrupt:
    print("interrupted")
"""


@pytest.mark.parametrize("fix, want", [(True, "interrupted"), (False, "not interrupted")])
def test_a_task_with_an_inherited_ignored_sigint_is_made_interruptible(fix, want):
    done = subprocess.run([sys.executable, "-c", CODE.format(fix=fix)], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == want


def test_a_custom_sigint_handler_is_left_alone():
    code = """
import signal
def mine(signum, frame): pass
signal.signal(signal.SIGINT, mine)
from experiments.scheduler import interruptible
interruptible()
print(signal.getsignal(signal.SIGINT) is mine)
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                          text=True, timeout=60)
    assert done.stdout.strip() == "True", done.stderr
