"""Harness part 1: JSON without the json package, the tagged-JSON codec of plain values, and
the framing of messages on pipes."""

from __future__ import annotations

import _json
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
