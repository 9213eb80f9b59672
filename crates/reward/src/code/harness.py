# aha test harness: runs the candidate's tests inside the sandbox and reports success with a nonce.
# The parent (aha) writes the nonce as the first line of stdin; the candidate's code runs after the
# harness has read it and closed stdin. Success is reported only by printing "<nonce> PASS" after
# every test ran; an early exit, an exception or a killed process never prints it. Equality in the
# tests is made strict: `a == b` becomes a check that compares built-in values by exact type
# (recursively), so an object whose __eq__ always returns True does not pass.
import ast as _ast
import builtins as _builtins
import os as _os
import sys as _sys


def _aha_make_eq():
    _type, _len, _zip, _all, _isinstance = type, len, zip, all, isinstance
    numeric = (int, float, complex)
    plain = (str, bytes, type(None))

    def one_way(a, b):
        ta, tb = _type(a), _type(b)
        if ta is bool or tb is bool:
            return ta is tb and a == b
        if tb in numeric:
            return ta in numeric and a == b
        if tb in plain:
            return ta is tb and a == b
        if tb in (list, tuple):
            return ta is tb and _len(a) == _len(b) and _all(strict_eq(x, y) for x, y in _zip(a, b))
        if tb is dict:
            if ta is not tb or _len(a) != _len(b):
                return False
            if not _all(_type(k) in plain or _type(k) in numeric for k in a):
                return False
            return _all(k in a and strict_eq(a[k], v) for k, v in b.items())
        if tb in (set, frozenset):
            return ta is tb and _all(_type(x) in plain or _type(x) in numeric for x in a) and a == b
        return a == b

    def strict_eq(a, b):
        return one_way(a, b) and one_way(b, a)

    return strict_eq


class _AhaStrict(_ast.NodeTransformer):
    def visit_Compare(self, node):
        self.generic_visit(node)
        if not any(isinstance(op, (_ast.Eq, _ast.NotEq)) for op in node.ops):
            return node
        parts, left = [], node.left
        for op, right in zip(node.ops, node.comparators):
            if isinstance(op, (_ast.Eq, _ast.NotEq)):
                call = _ast.Call(func=_ast.Name(id="__aha_eq", ctx=_ast.Load()), args=[left, right], keywords=[])
                parts.append(call if isinstance(op, _ast.Eq) else _ast.UnaryOp(op=_ast.Not(), operand=call))
            else:
                parts.append(_ast.Compare(left=left, ops=[op], comparators=[right]))
            left = right
        out = parts[0] if len(parts) == 1 else _ast.BoolOp(op=_ast.And(), values=parts)
        return _ast.copy_location(out, node)


def _aha_main():
    nonce = _sys.stdin.readline().strip()
    null = _os.open(_os.devnull, _os.O_RDONLY)
    _os.dup2(null, 0)
    report = _os.dup(1)
    write, exit_now = _os.write, _os._exit
    strict_eq = _aha_make_eq()
    saved = dict(_builtins.__dict__)
    with open("solution.py") as f:
        solution = f.read()
    with open("tests.py") as f:
        tests = f.read()
    entry = _os.environ.get("AHA_ENTRY_POINT", "")
    tree = _AhaStrict().visit(_ast.parse(tests, "tests.py"))
    if entry:
        tree.body.extend(_ast.parse(f"check({entry})").body)
    test_code = compile(_ast.fix_missing_locations(tree), "tests.py", "exec")
    namespace = {"__name__": "__main__"}
    try:
        exec(compile(solution, "solution.py", "exec"), namespace)
    except BaseException as e:  # noqa: B036 - SystemExit before the tests must fail them.
        print(f"solution raised {type(e).__name__}: {e}", file=_sys.stderr)
        exit_now(1)
    _builtins.__dict__.clear()
    _builtins.__dict__.update(saved)
    namespace["__aha_eq"] = strict_eq
    try:
        exec(test_code, namespace)
    except BaseException as e:  # noqa: B036
        print(f"tests failed: {type(e).__name__}: {e}", file=_sys.stderr)
        exit_now(1)
    try:
        _sys.stdout.flush()
    except BaseException:  # noqa: B036
        pass
    write(report, f"\n{nonce} PASS\n".encode())
    exit_now(0)


_aha_main()
