"""Test harness that :class:`archer.rewards.code.CodeGrader` runs inside the sandbox.

Run as ``python -I -S -c <this file's text> <results-fd> <secret-fd>`` (or its marshalled
bytecode ahead of the spec on stdin, see ``archer.rewards.code.harness_invocation``), the public
spec (JSON) on stdin.  Standard library only: it runs under the base interpreter, without the project or
site-packages.  Two kinds of process:

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
program (see the zygote section below), the P and its first W forked ahead of the program.
"""

from __future__ import annotations

import _json
import _signal as signal  # not ``signal``: it imports enum, a few ms per sandbox
import builtins
import io
import marshal
import os
import select
import struct
import sys
import time

# --- JSON without the ``json`` package (which imports re and enum: ~10 ms per sandbox) ---------


class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name):
        return {"NaN": float("nan"), "Infinity": float("inf"), "-Infinity": float("-inf")}[name]


_scan = _json.make_scanner(_ScanContext)


def _no_default(obj):
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


_encode = _json.make_encoder(None, _no_default, _json.encode_basestring_ascii, None, ":", ",",
                             False, False, True)


def json_loads(text):
    """``json.loads`` (the C scanner; NaN/Infinity accepted)."""
    if isinstance(text, (bytes, bytearray)):
        text = bytes(text).decode("utf-8")
    n = len(text)
    i = 0
    while i < n and text[i] in " \t\r\n":
        i += 1
    try:
        obj, end = _scan(text, i)
    except StopIteration:
        raise ValueError("no JSON value") from None
    while end < n and text[end] in " \t\r\n":
        end += 1
    if end != n:
        raise ValueError("extra data after the JSON value")
    return obj


def json_dumps(obj):
    """``json.dumps`` with compact separators (ASCII output)."""
    return "".join(_encode(obj, 0))

PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_SECCOMP, PR_SET_NO_NEW_PRIVS = 1, 4, 22, 38
SECCOMP_MODE_FILTER = 2
LOCKDOWN_FAILED = 121  # W's exit status when it could not lock itself down
MAX_NODES = 1_000_000


class CodecError(Exception):
    """A value that cannot cross between W and P."""


class WorkerGone(BaseException):
    """W died (or was killed) while P waited for it.  BaseException: check code's
    ``except Exception`` must not swallow it."""


class Timeout(BaseException):
    pass


# --- codec: plain values as tagged JSON ---------------------------------------------------------

def _node_kind(obj):
    d = getattr(obj, "__dict__", None)
    if not isinstance(d, dict) or "val" not in d:
        return None
    if "left" in d and "right" in d:
        return "T"
    if "next" in d:
        return "L"
    return None


def encode(obj, depth=0):
    """A plain value -> JSON-able structure (lists stay lists; other containers are tagged)."""
    if depth > 500:
        raise CodecError("value nested too deeply")
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj  # subclasses: json serialises the underlying value
    d = depth + 1
    if isinstance(obj, list):
        return [encode(x, d) for x in obj]
    if isinstance(obj, tuple):
        return {"t": [encode(x, d) for x in obj]}
    if isinstance(obj, dict):
        return {"d": [[encode(k, d), encode(v, d)] for k, v in obj.items()]}
    if isinstance(obj, frozenset):
        return {"f": [encode(x, d) for x in obj]}
    if isinstance(obj, set):
        return {"s": [encode(x, d) for x in obj]}
    if isinstance(obj, (bytes, bytearray)):
        return {"b": bytes(obj).hex()}
    if isinstance(obj, complex):
        return {"c": [obj.real, obj.imag]}
    kind = _node_kind(obj)
    if kind == "L":
        vals, seen, node, cyc = [], {}, obj, -1
        while node is not None:
            if id(node) in seen:
                cyc = seen[id(node)]
                break
            if _node_kind(node) != "L" or len(vals) > MAX_NODES:
                raise CodecError("malformed linked list")
            seen[id(node)] = len(vals)
            vals.append(encode(node.val, d))
            node = node.next
        return {"L": vals, "cyc": cyc}
    if kind == "T":
        out, queue, seen, k = [], [obj], set(), 0
        while k < len(queue):
            node = queue[k]
            k += 1
            if node is None:
                out.append(None)
                continue
            if id(node) in seen or _node_kind(node) != "T" or len(seen) > MAX_NODES:
                raise CodecError("malformed tree")
            seen.add(id(node))
            out.append({"v": encode(node.val, d)})
            queue.append(node.left)
            queue.append(node.right)
        while out and out[-1] is None:
            out.pop()
        return {"T": out}
    raise CodecError(f"cannot pass a value of type {type(obj).__name__}")


def _make_node(cls, val):
    if cls is None:
        raise CodecError("no node class to rebuild a linked list / tree")
    try:
        return cls(val)
    except Exception:  # noqa: BLE001 - an odd constructor: build it by hand
        node = object.__new__(cls)
        node.val = val
        return node


def decode(x, nodes=None, depth=0):
    """Inverse of :func:`encode`; builds fresh built-in objects (and nodes of ``nodes``)."""
    if depth > 500:
        raise CodecError("value nested too deeply")
    if x is None or type(x) in (bool, int, float, str):
        return x
    d = depth + 1
    if type(x) is list:
        return [decode(v, nodes, d) for v in x]
    if type(x) is not dict:
        raise CodecError("bad value")
    nodes = nodes or {}
    if "t" in x:
        return tuple(decode(v, nodes, d) for v in x["t"])
    if "d" in x:
        return {decode(k, nodes, d): decode(v, nodes, d) for k, v in x["d"]}
    if "s" in x:
        return {decode(v, nodes, d) for v in x["s"]}
    if "f" in x:
        return frozenset(decode(v, nodes, d) for v in x["f"])
    if "b" in x:
        return bytes.fromhex(x["b"])
    if "c" in x:
        re_, im = x["c"]
        return complex(float(re_), float(im))
    if "L" in x:
        cls = nodes.get("ListNode")
        built = [_make_node(cls, decode(v, nodes, d)) for v in x["L"]]
        for a, b in zip(built, built[1:]):
            a.next = b
        if built:
            cyc = int(x.get("cyc", -1))
            built[-1].next = built[cyc] if 0 <= cyc < len(built) else None
        return built[0] if built else None
    if "T" in x:
        cls = nodes.get("TreeNode")
        vals = x["T"]
        if not vals or vals[0] is None:
            return None

        def mk(v):
            node = _make_node(cls, decode(v["v"], nodes, d))
            node.left = node.right = None
            return node

        root = mk(vals[0])
        queue, k, i = [root], 0, 1
        while k < len(queue) and i < len(vals):
            parent = queue[k]
            k += 1
            for side in ("left", "right"):
                if i < len(vals) and vals[i] is not None:
                    child = mk(vals[i])
                    setattr(parent, side, child)
                    queue.append(child)
                i += 1
        return root
    raise CodecError("unknown tag")


# --- framing: 4-byte length + JSON ------------------------------------------------------------

def _write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def send(fd, obj):
    data = json_dumps(obj).encode("utf-8")
    _write_all(fd, struct.pack("<I", len(data)) + data)


def _read_exact(fd, n, deadline):
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise Timeout()
        chunk = os.read(fd, min(n - len(buf), 1 << 20))
        if not chunk:
            raise WorkerGone()
        buf += chunk
    return bytes(buf)


def recv(fd, deadline=None, limit=1 << 30):
    (n,) = struct.unpack("<I", _read_exact(fd, 4, deadline))
    if n > limit:
        raise CodecError(f"reply of {n} bytes over the limit")
    data = _read_exact(fd, n, deadline)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(2000)  # json's C parser recurses on the C stack
    try:
        msg = json_loads(data)
    except (ValueError, RecursionError) as e:
        raise CodecError(f"unreadable reply: {type(e).__name__}") from None
    finally:
        sys.setrecursionlimit(old)
    if not isinstance(msg, dict):
        raise CodecError("reply is not an object")
    return msg


def _tb(e):
    return f"{type(e).__name__}: {e}"[-1000:]


# --- lockdown of a worker ------------------------------------------------------------------------

class _Kernel:
    """prctl/capset through ctypes (loaded once in P, before any fork)."""

    def __init__(self):
        import ctypes

        self.ctypes = ctypes
        self.libc = ctypes.CDLL(None, use_errno=True)

        class FProg(ctypes.Structure):
            _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

        self.FProg = FProg

    def prctl(self, *args):
        c = self.ctypes
        if self.libc.prctl(*[c.c_ulong(a) for a in args]) != 0:
            err = c.get_errno()
            raise OSError(err, f"prctl{args[:1]}: {os.strerror(err)}")

    def drop_caps(self):
        c = self.ctypes
        header = (c.c_uint32 * 2)(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this process
        data = (c.c_uint32 * 6)()
        if self.libc.capset(header, data) != 0:
            err = c.get_errno()
            raise OSError(err, f"capset: {os.strerror(err)}")

    def seccomp(self, prog):
        c = self.ctypes
        buf = c.create_string_buffer(prog, len(prog))
        fprog = self.FProg(len(prog) // 8, c.addressof(buf))
        self.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
        self.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, c.addressof(fprog), 0, 0)


def lockdown(kernel, spec, parent):
    """In W, before candidate code: die with P, no caps, seccomp.  Exits on failure."""
    try:
        kernel.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(LOCKDOWN_FAILED)
        uid = spec.get("drop_uid")
        if uid is not None:
            os.setgroups([])
            os.setgid(int(uid))
            os.setuid(int(uid))
        kernel.drop_caps()
        prog = spec.get("seccomp")
        if prog:
            raw = bytes.fromhex(prog)
            me = struct.pack("<I", os.getpid())
            raw = raw.replace(struct.pack("<I", int(spec["pid_placeholder"])), me)
            kernel.seccomp(raw)
        else:
            kernel.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
    except BaseException as e:  # noqa: BLE001
        try:
            os.write(2, f"archer: worker lockdown failed: {e!r}\n".encode())
        finally:
            os._exit(LOCKDOWN_FAILED)


def _memfd(name, data=b""):
    fd = os.memfd_create(name, 0)
    if data:
        _write_all(fd, data)
        os.lseek(fd, 0, 0)
    return fd


def _keep_fds(fds):
    """Close every descriptor above 2 except ``fds``."""
    keep = sorted(set(fds))
    top = max(os.sysconf("SC_OPEN_MAX"), max(keep, default=0) + 1)
    lo = 3
    for fd in keep + [top]:
        if fd >= lo:
            os.closerange(lo, fd)
            lo = fd + 1


def _std_streams():
    sys.stdin = io.TextIOWrapper(io.BufferedReader(io.FileIO(0, "r", closefd=False)),
                                 encoding="utf-8", errors="replace")
    sys.stdout = io.TextIOWrapper(io.BufferedWriter(io.FileIO(1, "w", closefd=False)),
                                  encoding="utf-8", errors="replace")
    sys.stderr = io.TextIOWrapper(io.BufferedWriter(io.FileIO(2, "w", closefd=False)),
                                  encoding="utf-8", errors="backslashreplace",
                                  write_through=True)
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr


def _join_threads():
    threading = sys.modules.get("threading")  # no threads unless the program imported it
    if threading is not None:
        for t in threading.enumerate():
            if t is not threading.main_thread() and not t.daemon:
                t.join()


# --- worker bodies (run in W, after lockdown) ----------------------------------------------------

def _print_exc():
    try:
        import traceback  # only on this error path: its imports cost a few ms

        traceback.print_exc()
    except BaseException:  # noqa: BLE001
        e = sys.exc_info()[1]
        sys.stderr.write(f"{type(e).__name__}: {e}\n")


def run_stdin_program(code):
    """Run the program as ``__main__`` and exit like a real interpreter would."""
    _std_streams()
    rc = 0
    try:
        exec(code, {"__name__": "__main__", "__builtins__": builtins})
        _join_threads()
    except SystemExit as e:
        if e.code is None or e.code == 0:
            rc = 0
        elif isinstance(e.code, int):
            rc = e.code & 0xFF or 1
        else:
            rc = 1
            print(e.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001
        _print_exc()
        rc = 1
    try:
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001 - e.g. the file-size limit
        _print_exc()
        rc = rc or 1
    try:
        sys.stderr.flush()
    finally:
        os._exit(rc)


def _call_args(inp):
    lines = inp.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return [json_loads(line) for line in lines]


def rpc_worker(code, spec, req, rep):
    """Load the program, resolve the callable, then answer P's requests until EOF.
    ``code=None`` (a pre-forked W): first wait for P's ``load`` message (the marshalled
    program, its kind, entry and the run's CPU limit)."""
    _std_streams()
    if code is None:
        try:
            spec = recv(req)
            cpu = int(spec["cpu"])
            sys.modules["resource"].setrlimit(sys.modules["resource"].RLIMIT_CPU, (cpu, cpu))
            code = marshal.loads(bytes.fromhex(spec["code"]))
        except BaseException:  # noqa: BLE001 - P went away (or broke the protocol)
            os._exit(0)
    ns = {"__name__": "solution", "__builtins__": builtins}
    kind = spec["kind"]
    try:
        exec(code, ns)
        if kind == "check":
            target = eval(spec["entry"], ns)  # noqa: S307 - W runs untrusted code anyway
            if not callable(target):
                raise TypeError(f"{spec['entry']} is not callable")
        else:
            fn_name = spec["func_name"]
            cls = ns.get("Solution")
            if not isinstance(cls, type) and not callable(ns.get(fn_name)):
                raise NameError("no class Solution and no function " + fn_name)
    except BaseException as e:  # noqa: BLE001
        send(rep, {"load_error": _tb(e)})
        os._exit(0)
    send(rep, {"ready": 1})
    while True:
        try:
            msg = recv(req)
        except BaseException:  # noqa: BLE001 - P went away
            os._exit(0)
        try:
            if kind == "check":
                args = decode(msg["a"], ns)
                kwargs = decode(msg["k"], ns)
                result = target(*args, **kwargs)
                out = {"r": encode(result), "a": encode(args)}
            else:
                args = _call_args(msg["inp"])
                f = getattr(cls(), fn_name) if isinstance(cls, type) else ns[fn_name]
                result = f(*args)
                if isinstance(result, tuple):
                    result = list(result)
                try:
                    out = {"r": json_dumps(result)}
                except (TypeError, ValueError, RecursionError):
                    raise CodecError("result is not JSON: " + repr(result)[:300]) from None
        except BaseException as e:  # noqa: BLE001 - includes SystemExit
            out = {"e": _tb(e), "et": type(e).__name__}
        try:
            send(rep, out)
        except BaseException as e:  # noqa: BLE001
            send(rep, {"e": _tb(e), "et": type(e).__name__})


# --- P -------------------------------------------------------------------------------------------

class Judge:
    def __init__(self, spec, kernel):
        self.kernel = kernel
        self.pid = os.getpid()
        self.worker = None  # (pid, req_w, rep_r, err)
        self.configure(spec)

    def configure(self, spec):
        self.spec = spec
        self.T = float(spec.get("test_timeout", 6.0))
        self.cap = int(spec.get("max_output", 1 << 20))
        self.fail_fast = bool(spec.get("fail_fast", True))

    # -- workers --

    def _fork(self, child):
        pid = os.fork()
        if pid == 0:
            try:
                child()
            finally:
                os._exit(LOCKDOWN_FAILED)
        return pid

    def spawn_rpc(self, code):
        """Fork W for ``code``; ``code=None``: a pre-forked W, locked down, that waits for
        :meth:`load_worker`."""
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        null_in, out, err = _memfd("in"), _memfd("out"), _memfd("err")

        def child():
            os.dup2(null_in, 0)
            os.dup2(out, 1)
            os.dup2(err, 2)
            _keep_fds([req_r, rep_w])
            lockdown(self.kernel, self.spec, self.pid)
            rpc_worker(code, self.spec, req_r, rep_w)

        pid = self._fork(child)
        for fd in (req_r, rep_w, null_in, out):
            os.close(fd)
        self.worker = (pid, req_w, rep_r, err)
        return pid

    def load_worker(self, code, cpu_s):
        """Give the pre-forked W its program (compiled here, marshalled)."""
        spec = self.spec
        send(self.worker[1], {"op": "load", "code": marshal.dumps(code).hex(), "cpu": cpu_s,
                              "kind": spec["kind"], "entry": spec.get("entry"),
                              "func_name": spec.get("func_name")})

    def kill_worker(self):
        if self.worker is None:
            return None
        pid, req_w, rep_r, err = self.worker
        self.worker = None
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        _, status = os.waitpid(pid, 0)
        tail = os.pread(err, 600, max(0, os.lseek(err, 0, 2) - 600))
        for fd in (req_w, rep_r, err):
            os.close(fd)
        return status, tail.decode("utf-8", "replace")

    def worker_reply(self, msg=None):
        """Send ``msg`` (if any) to W and wait for its reply (test time limit)."""
        pid, req_w, rep_r, _ = self.worker
        try:
            if msg is not None:
                send(req_w, msg)
            return recv(rep_r, time.monotonic() + self.T, 4 * self.cap + (1 << 20))
        except (BrokenPipeError, WorkerGone):
            raise WorkerGone() from None

    def wait_child(self, pid, timeout):
        """The wait status of ``pid``, or None after killing it at ``timeout``."""
        try:
            pfd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            pfd = None
        if pfd is not None:
            try:
                ready = select.select([pfd], [], [], timeout)[0]
            finally:
                os.close(pfd)
        else:
            end, ready = time.monotonic() + timeout, False
            while time.monotonic() < end:
                got, status = os.waitpid(pid, os.WNOHANG)
                if got:
                    return status
                time.sleep(0.001)
        if not ready:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)
            return None
        return os.waitpid(pid, 0)[1]

    # -- kinds --

    def run_stdin(self, code, emit):
        emit(event="ready")
        for i, inp in enumerate(self.spec["inputs"]):
            fin = _memfd("in", inp.encode("utf-8"))
            fout, ferr = _memfd("out"), _memfd("err")

            def child(fin=fin, fout=fout, ferr=ferr):
                os.dup2(fin, 0)
                os.dup2(fout, 1)
                os.dup2(ferr, 2)
                _keep_fds([])
                lockdown(self.kernel, self.spec, self.pid)
                run_stdin_program(code)

            pid = self._fork(child)
            status = self.wait_child(pid, self.T)
            size = os.lseek(fout, 0, 2)
            out = os.pread(fout, min(size, self.cap + 1), 0)[: self.cap]
            err = os.pread(ferr, 1000, max(0, os.lseek(ferr, 0, 2) - 1000))
            for fd in (fin, fout, ferr):
                os.close(fd)
            detail = ""
            if status is None:
                st = "timeout"
            elif os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
                st = "ok"
            else:
                st = "error"
                code_ = os.WEXITSTATUS(status) if os.WIFEXITED(status) else None
                if code_ == LOCKDOWN_FAILED:
                    emit(event="sandbox_error", detail=err.decode("utf-8", "replace"))
                    return
                detail = err.decode("utf-8", "replace").strip()[-600:] or (
                    f"exit status {code_}" if code_ is not None
                    else f"killed by signal {os.WTERMSIG(status)}")
            emit(i=i, status=st, out=out.decode("utf-8", "replace"), truncated=size > self.cap,
                 detail=detail)
            if st != "ok" and self.fail_fast:
                return

    def _load(self, emit):
        """Wait for W's ready message; False (after reporting) when the program failed."""
        try:
            rep = self.worker_reply()
        except Timeout:
            self.kill_worker()
            emit(event="load_error", detail="time limit exceeded while loading", timeout=True)
            return False
        except (WorkerGone, CodecError):
            status, tail = self.kill_worker()
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) == LOCKDOWN_FAILED:
                emit(event="sandbox_error", detail=tail)
            else:
                emit(event="load_error", detail=f"program exited while loading "
                     f"({_status_text(status)}) {tail}".strip()[:1000])
            return False
        if "ready" not in rep:
            self.kill_worker()
            emit(event="load_error", detail=str(rep.get("load_error", "bad reply"))[:1000])
            return False
        return True

    def run_functional(self, code, emit):
        if not self._load(emit):
            return
        emit(event="ready")
        for i, inp in enumerate(self.spec["inputs"]):
            if self.worker is None:  # W died on an earlier test (only without fail_fast)
                self.spawn_rpc(code)
                if not self._load(emit):
                    return
            st, ret, detail, trunc = "ok", None, "", False
            try:
                rep = self.worker_reply({"op": "ftest", "inp": inp})
                if "e" in rep:
                    st, detail = "error", str(rep["e"])[:1000]
                else:
                    ret = str(rep.get("r"))
                    trunc = len(ret) > self.cap
                    ret = ret[: self.cap]
            except Timeout:
                st = "timeout"
                self.kill_worker()
            except (WorkerGone, CodecError) as e:
                status, tail = self.kill_worker()
                st = "error"
                detail = (str(e) or f"program exited during the test ({_status_text(status)})"
                          ) + (" " + tail if tail else "")
            emit(i=i, status=st, ret=ret, truncated=trunc, detail=detail[:1000])
            if st != "ok" and self.fail_fast:
                return

    def run_check(self, code, secret, emit):
        cns = {"__name__": "__archer_check__", "__builtins__": builtins}
        try:
            exec(compile(secret.get("prelude", ""), "<prelude>", "exec"), cns)
            if "check_bytecode" in secret:  # compiled by the host (same bytecode format)
                tests = marshal.loads(bytes.fromhex(secret["check_bytecode"]))
            else:
                tests = compile(secret["check_code"], "<tests>", "exec")
            exec(tests, cns)
            check = cns["check"]
        except BaseException as e:  # noqa: BLE001
            self.kill_worker()
            emit(event="test_error", detail=_tb(e))
            return
        sys.setrecursionlimit(10000)
        if not self._load(emit):
            return
        emit(event="ready")
        judge = self
        last = [time.monotonic()]
        n_done = [0]

        def candidate(*args, **kwargs):
            if judge.worker is None:
                raise WorkerGone()
            msg = {"op": "call", "a": encode(list(args)), "k": encode(kwargs)}
            try:
                rep = judge.worker_reply(msg)
            except Timeout:
                judge.kill_worker()
                raise
            except (WorkerGone, CodecError) as e:
                status, tail = judge.kill_worker()
                raise WorkerGone(str(e) or f"program exited during a call "
                                 f"({_status_text(status)}) {tail}".strip()) from None
            if time.monotonic() - last[0] > judge.T / 2:
                emit(event="tick")
                last[0] = time.monotonic()
            if "e" in rep:
                raise _candidate_error(rep)
            try:
                result = decode(rep["r"], cns)
                after = decode(rep["a"], cns)
            except (CodecError, KeyError, TypeError, ValueError) as e:
                raise CodecError(f"bad answer: {e}") from None
            _sync_args(args, after)
            return result

        def case(i, thunk):
            try:
                ok = thunk()
            except AssertionError as e:
                ok, why = False, _tb(e)
            except Exception as e:  # noqa: BLE001 - the candidate raised
                emit(i=i, status="error", detail=_tb(e))
                if judge.fail_fast:
                    raise
                return
            else:
                why = "assertion failed"
            n_done[0] = i + 1
            last[0] = time.monotonic()
            if ok:
                emit(i=i, status="ok")
                return
            emit(i=i, status="fail", detail=why)
            if judge.fail_fast:
                raise AssertionError(f"case {i} failed")

        cns["__archer_case__"] = case
        if self.spec["entry"].isidentifier():
            # the test code may call the entry point by name (HumanEval/33 does): the program's
            # function, as in HumanEval's own harness, not the prompt's stub
            cns[self.spec["entry"]] = candidate
        status, detail = "ok", ""
        try:
            check(candidate)
        except Timeout:
            status = "timeout"
        except WorkerGone as e:
            status, detail = "error", str(e) or "the program exited"
        except AssertionError as e:
            status, detail = "fail", _tb(e)
        except BaseException as e:  # noqa: BLE001
            status, detail = "error", _tb(e)
        emit(event="done", status=status, cases=n_done[0], detail=detail[:1000])


def _status_text(status):
    if status is None:
        return "killed"
    if os.WIFEXITED(status):
        return f"exit status {os.WEXITSTATUS(status)}"
    return f"signal {os.WTERMSIG(status)}"


def _candidate_error(rep):
    name = str(rep.get("et", ""))
    cls = getattr(builtins, name, None)
    msg = str(rep.get("e", ""))[:1000]
    if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == "builtins":
        try:
            return cls(msg)
        except Exception:  # noqa: BLE001
            pass
    return RuntimeError(msg)


def _sync_args(args, after):
    """Copy in-place changes W made to list/dict/set arguments back into P's objects."""
    if type(after) is not list or len(after) != len(args):
        return
    for a, b in zip(args, after):
        if type(a) is list and type(b) is list:
            a[:] = b
        elif type(a) is dict and type(b) is dict:
            a.clear()
            a.update(b)
        elif type(a) is set and type(b) is set:
            a.clear()
            a.update(b)


def _make_emitter(fd, nonce):
    dumps, write = json_dumps, _write_all

    def emit(**rec):
        rec["k"] = nonce
        write(fd, (dumps(rec) + "\n").encode("utf-8"))

    return emit


def serve(spec, kernel, res_fd, read_secret, judge=None, cpu_s=None):
    """One program run as the judge: compile, fork W (rpc kinds) *before* the secrets are read
    (``read_secret()``: the nonce and, for check problems, the test code), then run the tests
    and report on ``res_fd``.  ``judge``: one with a pre-forked W (warm sandboxes)."""
    if judge is None:
        judge = Judge(spec, kernel)
    else:
        judge.configure(spec)
    kind = spec["kind"]
    try:
        code = compile(spec["code"], "<solution>", "exec")
    except BaseException as e:  # noqa: BLE001
        code, compile_error = None, _tb(e)
    if code is not None and kind in ("functional", "check"):
        if judge.worker is not None:
            judge.load_worker(code, cpu_s)  # forked before this run's spec was even read
        else:
            judge.spawn_rpc(code)  # before the secrets are read: W never holds them
    elif judge.worker is not None:
        judge.kill_worker()
    secret = read_secret()
    emit = _make_emitter(res_fd, secret.pop("nonce"))
    if code is None:
        emit(event="compile_error", detail=compile_error)
    elif kind == "stdin":
        judge.run_stdin(code, emit)
    elif kind == "functional":
        judge.run_functional(code, emit)
    else:
        judge.run_check(code, secret, emit)
    # the verdict is complete: say so first, then kill W (its teardown takes a while); W has no
    # descriptor to the host and whatever it still does changes nothing
    emit(event="end")
    judge.kill_worker()


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


# --- the zygote: a warm sandbox that forks one judge per program -------------------------------
#
# Started by ``archer.rewards.sandbox.WarmSandbox`` as the only process (pid 2) of a bubblewrap
# pid namespace (pid 1 is bubblewrap's init).  fd 0: frames from the host; ``res_fd``: the
# results pipe (shared with the judges it forks); ``stop_fd``: 8-byte sequence numbers of runs to
# abort; ``init``: the workers' lockdown settings (seccomp filter, pid placeholder, uid).
#
# The zygote itself never reads a run's data.  It forks the judge of run ``seq`` ahead of time;
# that judge reseeds ``random``, forks its worker W (which locks itself down at once and then
# waits for a program), and only then reads frame A = ``<I len><I cpu_s>`` + spec JSON and
# frame B = ``<I len>`` + secret JSON from fd 0 (B after W received the program: W never holds
# the nonce or test code).  After that judge exits (or is killed on a stop), the zygote SIGKILLs
# every other process of the namespace and reaps it (it is their subreaper), wipes /tmp and the
# scratch dir, checks that nothing is left (processes, files, /dev entries, SysV IPC objects,
# unread bytes on fd 0), reports ``{"z": seq, "rc": ..., "clean": ...}`` and forks the next
# judge.  The host replaces the sandbox after any run that was not clean.

PR_SET_CHILD_SUBREAPER = 36
WIPE_DIRS = ("/tmp", "/scratch")
EXIT_NO_INPUT = 120  # a judge found fd 0 closed: the host is gone


def _read_into(fd, n):
    """Exactly ``n`` bytes from ``fd`` into a new bytearray (no intermediate bytes objects)."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = os.readv(fd, [view[got:]])
        if k == 0:
            raise WorkerGone()
        got += k
    view.release()
    return buf


def _others(me):
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in (1, me)]


def _reap():
    while True:
        try:
            got, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if got == 0:
            return


def _kill_others(me, grace=1.0):
    """SIGKILL and reap every process of the namespace but pid 1 and ``me``.  Returns (the
    processes found at first, those still there after ``grace`` seconds)."""
    end = time.monotonic() + grace
    found = None
    while True:
        _reap()
        left = _others(me)
        if found is None:
            found = left
        if not left or time.monotonic() > end:
            return found, left
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.001)


def _rm(path):
    st = os.lstat(path)
    if (st.st_mode & 0o170000) == 0o040000:  # a directory (not a symlink to one)
        os.chmod(path, 0o700)
        for name in os.listdir(path):
            _rm(path + "/" + name)
        os.rmdir(path)
    else:
        os.unlink(path)


def _wipe(dirs, modes):
    """Empty ``dirs`` and restore their modes; a list of what could not be cleaned."""
    bad = []
    for d in dirs:
        try:
            os.chmod(d, modes[d])
            for name in os.listdir(d):
                _rm(d + "/" + name)
            if os.listdir(d):
                bad.append(d)
        except (OSError, RecursionError):
            bad.append(d)
    return bad


def _sysv_objects():
    n = 0
    for kind in ("shm", "msg", "sem"):
        try:
            with open("/proc/sysvipc/" + kind, "rb") as f:
                n += max(0, len(f.read().splitlines()) - 1)
        except OSError:
            pass
    return n


def _dev_listing():
    out = []
    for d in ("/dev", "/dev/shm"):
        try:
            out.append(sorted(os.listdir(d)))
        except OSError:
            out.append(None)
    return out


def warm_judge(init, kernel, res_fd):
    """A judge forked ahead of its run: pre-fork W, then read the run from fd 0 and serve it."""
    rnd = sys.modules.get("random")
    if rnd is not None:
        rnd.seed()  # not the zygote's state, which every run would share
    judge = Judge(dict(init), kernel)
    judge.spawn_rpc(None)
    try:
        n, cpu_s = struct.unpack("<II", _read_exact(0, 8, None))
        spec = json_loads(_read_into(0, n))
    except WorkerGone:
        judge.kill_worker()
        os._exit(EXIT_NO_INPUT)
    sys.modules["resource"].setrlimit(sys.modules["resource"].RLIMIT_CPU, (cpu_s, cpu_s))
    spec.update(init)  # the lockdown settings are the zygote's, whatever the spec says
    serve(spec, kernel, res_fd, lambda: recv(0), judge=judge, cpu_s=cpu_s)


def zygote_main(res_fd, stop_fd, preload, init):
    import gc
    import resource  # noqa: F401 - the judges and workers use it (sys.modules)

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    kernel = _Kernel()
    kernel.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    kernel.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    me = os.getpid()

    def report(**rec):
        _write_all(res_fd, (json_dumps(rec) + "\n").encode("utf-8"))

    if me != 2 or _others(me):
        # not alone in a fresh pid namespace: refuse (killing "every other process" would be
        # wrong here)
        report(z="refused", detail=f"zygote is pid {me} with others {_others(me)[:5]}")
        os._exit(3)
    for mod in preload:
        try:
            __import__(mod)
        except ImportError:
            pass
    gc.freeze()  # forked judges and workers never scan (and so never copy) these objects
    modes = {d: os.stat(d).st_mode & 0o7777 for d in WIPE_DIRS}
    dev0 = _dev_listing()
    os.set_blocking(stop_fd, False)
    report(z="ready")
    seq = 0
    while True:
        seq += 1
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                os.close(stop_fd)
                warm_judge(init, kernel, res_fd)
                os._exit(0)
            finally:
                os._exit(LOCKDOWN_FAILED)
        status, stopped = _await_judge(pid, stop_fd, seq)
        t1 = time.monotonic()
        found, left = _kill_others(me)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == EXIT_NO_INPUT:
            os._exit(0)
        rc = os.WEXITSTATUS(status) if os.WIFEXITED(status) else -os.WTERMSIG(status)
        pending = bool(select.select([0], [], [], 0)[0])
        bad = _wipe(WIPE_DIRS, modes)
        ipc = _sysv_objects()
        dev_changed = _dev_listing() != dev0
        why = []
        if left:
            why.append(f"processes that would not die: {left[:5]}")
        elif found and rc == 0:  # a judge that exits normally has reaped its workers
            why.append(f"processes outlived the judge: {found[:5]}")
        if pending:
            why.append("unread input")
        if bad:
            why.append(f"could not wipe {bad}")
        if ipc:
            why.append(f"{ipc} SysV IPC objects")
        if dev_changed:
            why.append("/dev changed")
        report(z=seq, rc=rc, stopped=stopped, clean=not why, why="; ".join(why),
               ms=[round(1000 * (t1 - t0), 2), round(1000 * (time.monotonic() - t1), 2)])


def _await_judge(pid, stop_fd, seq):
    """Wait for the judge; SIGKILL it when the host sends ``seq`` on the stop pipe.
    Returns (wait status, whether it was stopped)."""
    pfd = os.pidfd_open(pid)
    stopped = False
    try:
        while True:
            ready = select.select([pfd, stop_fd], [], [])[0]
            if stop_fd in ready:
                try:
                    data = os.read(stop_fd, 4096)
                except BlockingIOError:
                    data = None
                if data == b"":  # the host is gone
                    os.kill(pid, signal.SIGKILL)
                    _kill_others(os.getpid())
                    os._exit(0)
                if data and seq in struct.unpack(f"<{len(data) // 8}Q", data[: len(data) // 8 * 8]):
                    os.kill(pid, signal.SIGKILL)
                    stopped = True
            if pfd in ready:
                break
    finally:
        os.close(pfd)
    return os.waitpid(pid, 0)[1], stopped


if __name__ == "__main__":
    main()
