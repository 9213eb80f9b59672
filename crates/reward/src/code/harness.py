# aha test harness: runs a candidate program's tests inside the sandbox; the verdict is decided by
# a process in which the candidate's code never runs.
#
# The harness forks. The child C closes stdin, runs the candidate (solution.py) and then serves
# function calls: it receives arguments as Python literals, calls the candidate's function and sends
# back the result as a literal, accepting only exact built-in types (int, float, bool, str, bytes,
# None, list, tuple, dict, set): an object with an always-true __eq__ or a subclass of int never
# leaves C. The parent T makes itself non-dumpable (so C cannot read its memory or file descriptors
# through /proc), reads the nonce the supervisor sent on stdin and the tests (deleting tests.py before
# C runs any candidate code), runs the tests with proxies that call into C and with `==`/`!=`
# rewritten to a strict, type-checked comparison, and prints "<nonce> PASS" only when every test
# passed. C never sees the nonce or the tests; exiting early (sys.exit, os._exit), crashing or
# hanging in C only makes the tests fail.
import ast as _ast
import json as _json
import os as _os
import sys as _sys


def _strict_eq_factory():
    numeric = (int, float, complex)
    plain = (str, bytes, type(None))

    def one_way(a, b):
        ta, tb = type(a), type(b)
        if ta is bool or tb is bool:
            return ta is tb and a == b
        if tb in numeric:
            return ta in numeric and a == b
        if tb in plain:
            return ta is tb and a == b
        if tb in (list, tuple):
            return ta is tb and len(a) == len(b) and all(strict_eq(x, y) for x, y in zip(a, b))
        if tb is dict:
            return ta is tb and len(a) == len(b) and all(k in a and strict_eq(a[k], v) for k, v in b.items())
        if tb in (set, frozenset):
            return ta is tb and a == b
        return a == b

    def strict_eq(a, b):
        return one_way(a, b) and one_way(b, a)

    return strict_eq


class _Strict(_ast.NodeTransformer):
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


_PLAIN = (int, float, bool, str, bytes, type(None))


def _plain(x, depth=0):
    """A copy of x made only of exact built-in types, or ValueError."""
    t = type(x)
    if depth > 50:
        raise ValueError("result nested too deeply")
    if t in _PLAIN:
        if t is float and (x != x or x in (float("inf"), float("-inf"))):
            raise ValueError("non-finite float result")
        return x
    if t in (list, tuple):
        return t(_plain(v, depth + 1) for v in x)
    if t is dict:
        return {_plain(k, depth + 1): _plain(v, depth + 1) for k, v in x.items()}
    if t in (set, frozenset):
        return t(_plain(v, depth + 1) for v in x)
    raise ValueError(f"result of type {t.__name__} is not a plain value")


def _send(fd, obj):
    data = (_json.dumps(obj) + "\n").encode()
    while data:
        data = data[_os.write(fd, data):]


def _recv(f):
    line = f.readline()
    if not line:
        raise EOFError("the program ended")
    return _json.loads(line)


def _serve(req_r, resp_w):
    """Child C: run the candidate, then answer calls."""
    null = _os.open(_os.devnull, _os.O_RDONLY)
    _os.dup2(null, 0)
    requests = _os.fdopen(req_r, "r")
    _recv(requests)  # Wait until T has read the tests and deleted tests.py.
    namespace = {"__name__": "__main__"}
    try:
        with open("solution.py") as f:
            exec(compile(f.read(), "solution.py", "exec"), namespace)
        import builtins

        shadowing = set(dir(builtins))
        names = [k for k, v in namespace.items() if callable(v) and not k.startswith("_") and k not in shadowing]
        _send(resp_w, {"names": names})
    except BaseException as e:  # noqa: B036 - even SystemExit: report and stop.
        _send(resp_w, {"error": f"{type(e).__name__}: {e}"})
        _os._exit(1)
    while True:
        req = _recv(requests)
        try:
            value = namespace[req["fn"]](*_ast.literal_eval(req["args"]))
            _send(resp_w, {"value": repr(_plain(value))})
        except BaseException as e:  # noqa: B036
            _send(resp_w, {"error": f"{type(e).__name__}: {e}"})


class _CandidateError(Exception):
    pass


def _proxy(name, req_w, responses):
    def call(*args):
        if type(args) is not tuple:
            raise _CandidateError("bad arguments")
        _send(req_w, {"fn": name, "args": repr(_plain(args))})
        reply = _recv(responses)
        if "error" in reply:
            raise _CandidateError(f"{name} raised {reply['error']}")
        return _ast.literal_eval(reply["value"])

    call.__name__ = name
    return call


def _main():
    import ctypes

    if ctypes.CDLL(None).prctl(4, 0, 0, 0, 0) != 0:  # PR_SET_DUMPABLE = 0
        raise SystemExit("cannot make the harness non-dumpable")
    req_r, req_w = _os.pipe()
    resp_r, resp_w = _os.pipe()
    child = _os.fork()
    if child == 0:
        _os.close(req_w)
        _os.close(resp_r)
        try:
            _serve(req_r, resp_w)
        finally:
            _os._exit(1)
    _os.close(req_r)
    _os.close(resp_w)
    nonce = _sys.stdin.readline().strip()
    with open("tests.py") as f:
        tests = f.read()
    _os.unlink("tests.py")
    entry = _os.environ.get("AHA_ENTRY_POINT", "")
    tree = _Strict().visit(_ast.parse(tests, "tests.py"))
    if entry:
        tree.body.extend(_ast.parse(f"check({entry})").body)
    code = compile(_ast.fix_missing_locations(tree), "tests.py", "exec")
    responses = _os.fdopen(resp_r, "r")
    _send(req_w, {"start": True})
    hello = _recv(responses)
    if "error" in hello:
        print(f"solution failed: {hello['error']}", file=_sys.stderr)
        _os._exit(1)
    namespace = {"__name__": "__main__", "__aha_eq": _strict_eq_factory()}
    for name in hello["names"]:
        namespace[name] = _proxy(name, req_w, responses)
    try:
        exec(code, namespace)
    except BaseException as e:  # noqa: B036
        print(f"tests failed: {type(e).__name__}: {e}", file=_sys.stderr)
        _os.kill(child, 9)
        _os._exit(1)
    _os.kill(child, 9)
    _os.waitpid(child, 0)
    _sys.stdout.flush()
    _os.write(1, f"\n{nonce} PASS\n".encode())
    _os._exit(0)


_main()
