"""Code verifier: run a completion's program against a problem's tests, sandboxed.

Test formats (:class:`Problem.kind`):

* ``"stdin"``: the program reads the test input on stdin (fd 0, so ``input()``,
  ``sys.stdin`` and ``open(0)`` all work) and its stdout is compared as LiveCodeBench does:
  both sides stripped, split in lines, each line stripped, same number of lines, and each line
  equal or, failing that, equal as a list of ``Decimal`` tokens (so ``0.50`` == ``0.5``).
* ``"functional"``: LiveCodeBench's LeetCode format: ``Solution().<func_name>`` (or a
  top-level function) is called with one JSON value per input line; the result (tuples read
  as lists) must ``==`` the JSON expected output.
* ``"check"``: an assert suite ``def check(candidate): assert ...`` followed by
  ``check(Solution().fn)`` (DeepCoder/rllm LeetCode train set); HumanEval problems (prompt +
  completion + test + ``check(entry_point)``) are turned into this kind.  Each top-level
  ``assert`` of ``check`` counts as one test.

Running (:mod:`archer.rewards.code.harness`): one sandbox per program.  Inside it a *judge*
process that never executes candidate code forks *workers* that do; each worker closes every
inherited descriptor, drops all capabilities and installs its own seccomp filter (no processes,
no signals to other processes, no ptrace, no non-unix sockets, ...) before the program runs.
stdin programs get a fresh worker per test; functional and check programs one worker that
answers the judge's calls.  The verdict comes only from the judge's records on a pipe the
workers do not hold, each stamped with a per-run random nonce; exit codes and printed text
never count, and a run without the judge's final ``end`` record is a failure.

Warm pool (default under bubblewrap; ``SandboxConfig(warm_pool=False)`` for a cold sandbox per
program): each sandbox of :class:`archer.rewards.sandbox.WarmPool` runs a zygote that has the
harness and the usual modules (:data:`ZYGOTE_PRELOAD`) imported and forks the judge of the next
program in advance; that judge forks its worker, which locks itself down and waits for the
program.  Per program the host sends the public spec and then the secrets (fresh nonce, test
code) down the pipe; the judge reads them itself, the spec first and the secrets only after its
worker got the program.  The verdict is returned at the judge's ``end`` record; the zygote then
kills whatever is left, wipes /tmp and the scratch dir and reports, and the sandbox runs
nothing else before a clean report (else it is replaced).  See ``archer.rewards.sandbox`` for
what sharing a sandbox between programs adds to the threat model and how it is contained.

* stdin/functional: the expected outputs never enter the sandbox; the host compares (functional
  results type-strictly, :func:`strict_equal`) and stops at the first mismatch (``fail_fast``).
* check suites (HumanEval, LeetCode): the judge runs ``check`` itself with a proxy
  ``candidate`` that forwards each call to the worker; arguments and results cross as tagged
  JSON and are rebuilt as plain built-in objects (and ``ListNode``/``TreeNode``), so a result
  cannot carry its own ``__eq__``, and patching builtins, ``check``, ``AssertionError`` or the
  harness in the worker changes nothing in the judge.  The worker is forked before the judge
  reads the test code and the nonce, so its memory holds neither.

Threat model, honestly: the judge is as strong as the kernel boundary between two processes of
the same uid without capabilities (the judge is non-dumpable, the workers cannot ptrace, signal
or open its ``/proc`` entries).  A stdin worker is forked after the judge learned the nonce, so
its memory holds a copy; it has no descriptor to use it on.  In the warm pool, nothing of an
earlier program (its code, inputs, test code, nonce) is in a later worker's memory: the zygote
they all descend from never reads a run's data.  The candidate sees its own
arguments, as any program does.  Without bubblewrap (the fallback) the same judge/worker split
and seccomp filter apply, but the file system is not isolated: workers run as ``nobody`` when
started as root and ``nobody`` can read the standard library, otherwise as the same uid without
capabilities, so files that uid owns are writable.

LiveCodeBench records are loaded with :func:`load_lcb_record`, in the local shape (a list of
test dicts) or the official one (JSON strings, or base64(zlib(pickle(JSON string))) decoded by
a restricted unpickler that refuses every global).

Modules: :mod:`~archer.rewards.code.problems` (data model), :mod:`~archer.rewards.code.program`
(code extraction, header, the program run), :mod:`~archer.rewards.code.checks` (check suites),
:mod:`~archer.rewards.code.compare` (output comparison), :mod:`~archer.rewards.code.corpora`
(problems from data records), :mod:`~archer.rewards.code.harness` (the script run in the
sandbox), :mod:`~archer.rewards.code.grader` (:class:`CodeGrader`) and
:mod:`~archer.rewards.code.reward` (the ``"code"`` reward).
"""

from archer.rewards.code.checks import count_check_asserts, split_check, split_check_tree
from archer.rewards.code.compare import compare_functional, compare_stdout, strict_equal
from archer.rewards.code.corpora import (
    MAX_DECOMPRESSED,
    decode_lcb_tests,
    encode_lcb_tests,
    filter_lcb,
    humaneval_problem,
    load_lcb_record,
    restricted_loads,
    to_problem,
)
from archer.rewards.code.corpora import (
    _to_datetime as _to_datetime,  # evals.registry shares the verifier's date parsing
)
from archer.rewards.code.grader import CodeGrader
from archer.rewards.code.harness import HARNESS, harness_invocation
from archer.rewards.code.problems import REASONS, CodeVerdict, Problem, TestCase, TestResult
from archer.rewards.code.program import (
    HEADER_MODULES,
    IMPORT_HEADER,
    LEETCODE_HELPERS,
    ZYGOTE_PRELOAD,
    build_program,
    checker_prelude,
    extract_code,
)
from archer.rewards.code.reward import code_reward, default_grader

__all__ = [
    "HARNESS",
    "HEADER_MODULES",
    "IMPORT_HEADER",
    "LEETCODE_HELPERS",
    "MAX_DECOMPRESSED",
    "REASONS",
    "ZYGOTE_PRELOAD",
    "CodeGrader",
    "CodeVerdict",
    "Problem",
    "TestCase",
    "TestResult",
    "build_program",
    "checker_prelude",
    "code_reward",
    "compare_functional",
    "compare_stdout",
    "count_check_asserts",
    "decode_lcb_tests",
    "default_grader",
    "encode_lcb_tests",
    "extract_code",
    "filter_lcb",
    "harness_invocation",
    "humaneval_problem",
    "load_lcb_record",
    "restricted_loads",
    "split_check",
    "split_check_tree",
    "strict_equal",
    "to_problem",
]
