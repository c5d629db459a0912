"""The program a sandbox runs for a completion: the code block taken from it, LiveCodeBench's
import header, the LeetCode helpers, and check suites split into their asserts."""

from __future__ import annotations

import re

from archer.rewards.code.problems import Problem

HEADER_MODULES = (
    "string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
    "statistics", "itertools", "functools", "operator", "io", "sys", "json", "builtins", "typing")
# Imports LiveCodeBench puts before every solution (same modules, same order).
#: imported once by a warm sandbox's zygote, so no program pays for them: the LiveCodeBench
#: header's modules, what HumanEval prompts import, what the harness imports on error paths
ZYGOTE_PRELOAD = HEADER_MODULES + (
    "traceback", "dataclasses", "decimal", "fractions", "numbers", "array", "textwrap",
    "hashlib", "time", "unicodedata")
IMPORT_HEADER = "\n".join(
    [f"from {m} import *" for m in HEADER_MODULES]
    + [f"import {m}" for m in (
        "string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random",
        "statistics", "itertools", "functools", "operator", "io", "sys", "json")]
    + ["sys.setrecursionlimit(50000)", ""]
)



# --- extraction --------------------------------------------------------------------------------

_FENCE = re.compile(r"^[ \t]*```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^[ \t]*```", re.S | re.M)


def extract_code(completion: str) -> str | None:
    """The last fenced ```python / ```py / ``` block (after ``</think>`` when present)."""
    if not isinstance(completion, str):
        return None
    if "</think>" in completion:
        completion = completion.rsplit("</think>", 1)[1]
    elif "<think>" in completion:
        return None  # thinking never finished
    blocks = [
        body for lang, body in _FENCE.findall(completion)
        if lang.lower() in ("", "python", "py", "python3")
    ]
    if not blocks or not blocks[-1].strip():
        return None
    return blocks[-1]



# --- LeetCode helpers --------------------------------------------------------------------------

#: Helpers the LeetCode check suites (DeepCoder / LeetCodeDataset) call without defining them:
#: the same names and semantics as that data set's prompt preamble.  Prepended to the program
#: and to the test code of ``check`` problems that use the LiveCodeBench header.
LEETCODE_HELPERS = """
inf = float('inf')


class ListNode:
    def __init__(self, val=0, next=None):
        self.val = val
        self.next = next


class TreeNode:
    def __init__(self, val=0, left=None, right=None):
        self.val = val
        self.left = left
        self.right = right


def list_node(values):
    head = None
    for v in reversed(list(values or [])):
        head = ListNode(v, head)
    return head


def is_same_list(p1, p2):
    while p1 is not None and p2 is not None:
        if p1.val != p2.val:
            return False
        p1, p2 = p1.next, p2.next
    return p1 is None and p2 is None


def tree_node(values):
    if not values:
        return None
    root = TreeNode(values[0])
    queue, i = collections.deque([root]), 1
    while queue:
        node = queue.popleft()
        if i < len(values) and values[i] is not None:
            node.left = TreeNode(values[i])
            queue.append(node.left)
        i += 1
        if i < len(values) and values[i] is not None:
            node.right = TreeNode(values[i])
            queue.append(node.right)
        i += 1
    return root


def is_same_tree(p, q):
    if not p and not q:
        return True
    if not p or not q or p.val != q.val:
        return False
    return is_same_tree(p.left, q.left) and is_same_tree(p.right, q.right)
"""


def _uses_leetcode_helpers(problem: Problem) -> bool:
    return problem.kind == "check" and problem.header


def build_program(code: str, problem: Problem) -> str:
    """The program the worker runs: header (+ LeetCode helpers), HumanEval prompt, code."""
    if problem.prompt:
        # HumanEval: the completion may be a whole function or only its body
        if problem.entry_point and re.search(rf"^\s*def\s+{problem.entry_point}\s*\(", code,
                                             re.M):
            code = problem.prompt + "\n" + code
        else:
            code = problem.prompt + code
    if problem.suffix:
        code = code + "\n\n" + problem.suffix
    if _uses_leetcode_helpers(problem):
        code = LEETCODE_HELPERS + "\n" + code
    return (IMPORT_HEADER + "\n" + code) if problem.header else code


def checker_prelude(problem: Problem) -> str:
    """What the judge runs before a check problem's test code: the HumanEval prompt (its
    helper functions, e.g. ``poly``), or the header and LeetCode helpers."""
    if problem.prompt:
        return problem.prompt
    if problem.header:
        return IMPORT_HEADER + "\n" + LEETCODE_HELPERS
    return ""
