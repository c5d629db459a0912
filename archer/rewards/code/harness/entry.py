"""Harness part 6: the entry point, a cold run (one judge) or ``--zygote`` (a warm sandbox)."""

from __future__ import annotations

import _signal as signal  # not ``signal``: it imports enum, a few ms per sandbox
import os
import sys

if __name__ != "__main__":  # imported on the host; in the sandbox the parts are one script
    from archer.rewards.code.harness.codec import json_loads
    from archer.rewards.code.harness.judge import serve
    from archer.rewards.code.harness.lockdown import PR_SET_DUMPABLE, _Kernel
    from archer.rewards.code.harness.zygote import zygote_main


def main():
    if "--zygote" in sys.argv:
        i = sys.argv.index("--zygote")
        res_fd, stop_fd = int(sys.argv[i + 1]), int(sys.argv[i + 2])
        preload = [m for m in sys.argv[i + 3].split(",") if m]
        zygote_main(res_fd, stop_fd, preload, json_loads(sys.argv[i + 4]))
        return
    res_fd, sec_fd = int(sys.argv[-2]), int(sys.argv[-1])
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    spec = json_loads(sys.stdin.buffer.read())
    kernel = _Kernel()
    kernel.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    for mod in spec.get("preload", ()):
        try:
            __import__(mod)
        except ImportError:
            pass

    def read_secret():
        with os.fdopen(sec_fd, "rb") as f:
            return json_loads(f.read())

    serve(spec, kernel, res_fd, read_secret)
    os._exit(0)



if __name__ == "__main__":
    main()
