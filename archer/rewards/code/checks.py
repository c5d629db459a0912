"""Check suites (``def check(candidate): assert ...`` then ``check(...)``): their asserts
counted and split off, so that each top-level assert is one test."""

from __future__ import annotations

import ast


def _check_def(tree: ast.Module) -> ast.FunctionDef | None:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "check":
            return node
    return None


def count_check_asserts(code: str) -> int:
    try:
        fn = _check_def(ast.parse(code))
    except SyntaxError:
        return 0
    return sum(isinstance(s, ast.Assert) for s in fn.body) if fn else 0


def _is_check_call(stmt: ast.stmt) -> bool:
    return (isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call)
            and isinstance(stmt.value.func, ast.Name) and stmt.value.func.id == "check"
            and len(stmt.value.args) == 1 and not stmt.value.keywords)


def split_check(code: str) -> tuple[str, str, int]:
    """Split a check suite into (test code, entry expression, number of cases): see
    :func:`split_check_tree`, whose tree this unparses."""
    tree, entry, n = split_check_tree(code)
    return ast.unparse(tree), entry, n


def split_check_tree(code: str) -> tuple[ast.Module, str, int]:
    """Split a check suite into (test code as a tree, entry expression, number of cases).

    The top-level ``check(<expr>)`` calls are removed: ``<expr>`` (``Solution().twoSum``,
    a HumanEval entry point) is evaluated by the worker that runs the program, and the judge
    calls ``check`` itself with a proxy.  Each top-level ``assert`` of ``check`` becomes a
    reported case ``__archer_case__(i, lambda: <test>)``.  Raises ValueError when there is no
    ``def check`` or no ``check(...)`` call, SyntaxError when the code does not parse.
    """
    tree = ast.parse(code)
    fn = _check_def(tree)
    if fn is None:
        raise ValueError("test code defines no check() function")
    calls = [s for s in tree.body if _is_check_call(s)]
    if not calls:
        raise ValueError("test code never calls check(<candidate>)")
    entry = ast.unparse(calls[-1].value.args[0])
    tree.body = [s for s in tree.body if not _is_check_call(s)]
    n = 0
    body = []
    for stmt in fn.body:
        if isinstance(stmt, ast.Assert):
            call = ast.Expr(ast.Call(
                func=ast.Name("__archer_case__", ast.Load()),
                args=[ast.Constant(n), ast.Lambda(
                    ast.arguments(posonlyargs=[], args=[], kwonlyargs=[], kw_defaults=[],
                                  defaults=[]), stmt.test)],
                keywords=[]))
            body.append(ast.copy_location(call, stmt))
            n += 1
        else:
            body.append(stmt)
    fn.body = body
    ast.fix_missing_locations(tree)
    return tree, entry, n
