"""MBPP+ (evalplus) problems as check suites for Archer's code verifier.

An MBPP+ record (evalplus's release format: ``task_id`` "Mbpp/N", ``prompt``, ``entry_point``,
``canonical_solution``, ``base_input``, ``plus_input``, ``atol``) has inputs but no expected
outputs: evalplus computes them by running the canonical solution. :func:`check_code` turns a
record into the test code of a ``check`` problem, which the code runner executes in its judge
(inside the sandbox, like every check suite):

- the canonical solution is executed in its own namespace, and for every input (base inputs,
  then plus inputs) the expected value is its result on a deep copy of the input;
- the candidate (the judge's proxy to the sandboxed program) is called on another copy, and
  the two are compared as evalplus compares them: equality, then ``np.allclose``-style
  closeness (rtol 1e-7, the record's ``atol``, 1e-6 for float results when ``atol`` is 0) for
  floats and flat lists/tuples of floats with the same type and length, and evalplus's
  special oracles (set equality for 8 tasks, "is not None" for 3, and the alternative
  answers it accepts for Mbpp/164, 295, 558 and 581).

Inputs are written into the test code as Python literals after evalplus's own input
deserialisation (tuples, sets and complex numbers that JSON cannot hold), so a problem's test
code is self-contained and the canonical solution never runs outside the sandbox. For the
three "is not None" tasks the candidate's entry point is wrapped (:func:`program_suffix`).
"""

from __future__ import annotations

import math
from typing import Any

from archer.extras import require

# evalplus 0.3 (evalplus/eval/_special_oracle.py): tasks whose outputs are compared as sets,
# and tasks where only "the output is not None" is checked
SET_EQ_TASKS = ("similar_elements", "find_char_long", "common_in_nested_lists",
                "extract_singly", "larg_nnum", "intersection_array", "find_dissimilar", "Diff")
NOT_NONE_TASKS = ("check_str", "text_match_three", "text_starta_endb")


def py_literal(value: Any) -> str:
    """Python source that evaluates to ``value`` (built-in containers and scalars; floats
    inf/nan and complex numbers included, which ``repr`` does not write as literals)."""
    if value is None or isinstance(value, (bool, int, str, bytes)):
        return repr(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "float('nan')"
        if math.isinf(value):
            return "float('inf')" if value > 0 else "float('-inf')"
        return repr(value)
    if isinstance(value, complex):
        return f"complex({py_literal(value.real)}, {py_literal(value.imag)})"
    if isinstance(value, list):
        return "[" + ", ".join(py_literal(v) for v in value) + "]"
    if isinstance(value, tuple):
        return "(" + "".join(py_literal(v) + ", " for v in value) + ")"
    if isinstance(value, (set, frozenset)):
        inner = "[" + ", ".join(py_literal(v) for v in value) + "]"
        return f"{type(value).__name__}({inner})"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{py_literal(k)}: {py_literal(v)}"
                               for k, v in value.items()) + "}"
    raise TypeError(f"cannot write a {type(value).__name__} as a Python literal")


def deserialize_inputs(task_id: str, inputs: list) -> list:
    """evalplus's MBPP+ input deserialisation (JSON lists back to tuples/sets/complex for
    the tasks that take them)."""
    mbpp = require("evalplus.data.mbpp", "eval", "the MBPP+ benchmark and reward")
    return mbpp.mbpp_deserialize_inputs(task_id, inputs)


# The judge-side comparison; {name}s are filled in by check_code. Kept as plain source so the
# judge needs nothing but the standard library.
_CHECK_TEMPLATE = '''\
import copy as _archer_copy
import math as _archer_math

_ARCHER_ENTRY = {entry!r}
_ARCHER_ATOL = {atol}
_ARCHER_SET_EQ = {set_eq}
_ARCHER_NOT_NONE = {not_none}
_archer_ns = {{}}
exec(compile({ref!r}, "<mbpp+ canonical solution>", "exec"), _archer_ns)
_archer_ref = _archer_ns[_ARCHER_ENTRY]
_ARCHER_INPUTS = {inputs}


def _archer_is_floats(x):
    if isinstance(x, float):
        return True
    if isinstance(x, (list, tuple)) and x:
        return all(isinstance(i, float) for i in x)
    return False


def _archer_close(out, exp, atol):
    if isinstance(exp, (list, tuple)):
        return all(_archer_close(o, e, atol) for o, e in zip(out, exp))
    if isinstance(out, (list, tuple)) or isinstance(out, str) or isinstance(exp, str):
        return False
    try:
        if _archer_math.isnan(exp) or _archer_math.isnan(out):
            return False
        if _archer_math.isinf(exp) or _archer_math.isinf(out):
            return out == exp
        return abs(out - exp) <= atol + 1e-07 * abs(exp)
    except TypeError:
        return False


def _archer_surface_area(base_edge, height):
    slant = _archer_math.sqrt((base_edge / 2) ** 2 + height ** 2)
    return round(base_edge ** 2 + 2 * base_edge * slant)


def _archer_digit_distance(num1, num2):
    a, b = str(num1), str(num2)
    n = max(len(a), len(b))
    return sum(abs(int(x) - int(y)) for x, y in zip(a.zfill(n), b.zfill(n)))


def _archer_same(out, exp, inp, atol):
    exact = out == exp
    if _ARCHER_ENTRY == "are_equivalent":
        exact = True
    elif _ARCHER_ENTRY == "sum_div":
        exact = exact or out == 0
    elif _ARCHER_ENTRY == "surface_Area":
        try:
            exact = exact or abs(out - _archer_surface_area(*inp)) <= atol
        except TypeError:
            pass
    elif _ARCHER_ENTRY == "digit_distance_nums":
        exact = exact or out == _archer_digit_distance(*inp)
    elif _ARCHER_ENTRY in _ARCHER_SET_EQ:
        try:
            exact = set(out) == set(exp)
        except TypeError:
            exact = False
    elif _ARCHER_ENTRY in _ARCHER_NOT_NONE:
        exact = out == exp if isinstance(out, bool) else exp == (out is not None)
    if atol == 0 and _archer_is_floats(exp):
        atol = 1e-06
    if not exact and atol != 0:
        if type(out) is not type(exp):
            return False
        if isinstance(exp, (list, tuple)) and len(out) != len(exp):
            return False
        return _archer_close(out, exp, atol)
    return bool(exact)


def check(candidate):
    for _i, _inp in enumerate(_ARCHER_INPUTS):
        _exp = _archer_ref(*_archer_copy.deepcopy(_inp))
        if _ARCHER_ENTRY in _ARCHER_NOT_NONE:
            _exp = _exp is not None
        _out = candidate(*_archer_copy.deepcopy(_inp))
        assert _archer_same(_out, _exp, _inp, _ARCHER_ATOL), (
            f"test {{_i}}: expected {{_exp!r:.200}}, got {{_out!r:.200}}")
'''


_NOT_NONE_WRAPPER = """\
_archer_candidate = {entry}


def {entry}(*args, **kwargs):
    out = _archer_candidate(*args, **kwargs)
    return out if out is None or isinstance(out, bool) else True
"""


def program_suffix(record: dict) -> str:
    """Code appended to the candidate's program. For the tasks where evalplus checks only
    "the output is not None" (their reference returns a ``re.Match``, which cannot leave the
    sandboxed worker as plain data), the entry point is wrapped to return ``True`` for any
    other non-bool value: the same verdicts as evalplus's oracle."""
    entry = record["entry_point"]
    return _NOT_NONE_WRAPPER.format(entry=entry) if entry in NOT_NONE_TASKS else ""


def check_code(record: dict, *, plus: bool = True) -> str:
    """The ``check(candidate)`` test code of one MBPP+ record (base inputs, then plus inputs
    unless ``plus`` is False)."""
    task_id = str(record["task_id"])
    inputs = deserialize_inputs(task_id, record["base_input"])
    if plus:
        inputs = inputs + deserialize_inputs(task_id, record["plus_input"])
    if not inputs:
        raise ValueError(f"MBPP+ record {task_id} has no inputs")
    ref = record["prompt"] + record["canonical_solution"]
    return _CHECK_TEMPLATE.format(
        entry=record["entry_point"], atol=py_literal(float(record.get("atol") or 0)),
        set_eq=py_literal(SET_EQ_TASKS), not_none=py_literal(NOT_NONE_TASKS), ref=ref,
        inputs=py_literal([list(i) for i in inputs]))
