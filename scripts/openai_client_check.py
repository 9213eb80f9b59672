#!/usr/bin/env python3
"""Checks a running `aha serve` with the official `openai` Python client (PyPI `openai`).

Usage: openai_client_check.py BASE_URL [MODEL] --model-dir DIR [--max-body-bytes N]
       [--max-tokens-limit N]

BASE_URL is the server root (`http://127.0.0.1:PORT`, a trailing `/v1` is accepted); MODEL is the
served model name (default: the first one `/v1/models` lists); DIR is the model directory the
server was started with (reloaded through `/update_weights_from_disk`). The two limits are the
server's `--max-body-bytes` and `--max-tokens-limit` (defaults: the server's defaults).

Runs, through the client where it can and raw HTTP (standard library) where it must: the model
list; chat without and with streaming (the assembled deltas equal the non-streamed text at
temperature 0, the last chunk carries finish_reason); completions with `logprobs=1` (one entry per
completion token), `n=3`, token-id prompts, vLLM's `return_tokens_as_token_ids`; every error case
(unknown model 404, invalid temperature 400 naming `temperature`, max_tokens over the limit 400,
body over the limit 413, malformed JSON 400, all in OpenAI's error shape); and weight reloads (a
bad path answers 400 and the old weights keep serving; the same directory answers 200 with the
next `weight_version`). Prints a JSON summary on stdout; exits 1 naming every failed check.
`crates/aha/tests/serve_openai.rs` runs it against a tiny model; `scripts/fetch-fixtures.sh`
installs the client into `fixtures-cache/py`.
"""

import argparse
import json
import re
import socket
import sys
import time
import traceback
import urllib.error
import urllib.parse
import urllib.request

try:
    import openai
except ImportError:  # pragma: no cover - environment problem, reported plainly
    sys.exit("openai_client_check: the `openai` package is missing (run scripts/fetch-fixtures.sh "
             "and use fixtures-cache/py/bin/python)")


class CheckFailed(Exception):
    """A check's expectation did not hold."""


def expect(cond, message):
    if not cond:
        raise CheckFailed(message)


def extra(obj, name):
    """A field outside the OpenAI schema (pydantic keeps it in `model_extra`)."""
    value = getattr(obj, name, None)
    if value is None and getattr(obj, "model_extra", None):
        value = obj.model_extra.get(name)
    return value


# --- raw HTTP (standard library) -------------------------------------------------------------

def raw(root, method, path, body=None, content_type="application/json", timeout=60):
    """Sends one request; returns (status, parsed JSON or raw text)."""
    data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
    req = urllib.request.Request(root + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, text = resp.status, resp.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as err:
        status, text = err.code, err.read().decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def oversized_post(root, path, size, timeout=30):
    """POSTs a `size`-byte JSON body over a plain socket; returns (status, JSON or text).

    The server may answer 413 from the Content-Length alone and close without reading the body:
    the response is awaited before the body is sent, and a reset while sending is tolerated.
    """
    url = urllib.parse.urlsplit(root)
    filler = size - len('{"model":"x","prompt":""}')
    body = ('{"model":"x","prompt":"' + "a" * max(filler, 0) + '"}').encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    sock = socket.create_connection((url.hostname, url.port or 80), timeout=timeout)
    received = b""
    try:
        sock.sendall(head)
        sock.settimeout(1.0)
        try:
            received = sock.recv(65536)
        except socket.timeout:
            pass
        sock.settimeout(timeout)
        if not received:
            try:
                sock.sendall(body)
            except (BrokenPipeError, ConnectionResetError):
                pass
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
            if b"\r\n\r\n" in received and _complete(received):
                break
    finally:
        sock.close()
    expect(received.startswith(b"HTTP/1."), f"no HTTP response to a {len(body)}-byte body (got {received[:80]!r})")
    status = int(received.split(b" ", 2)[1])
    payload = received.split(b"\r\n\r\n", 1)[1] if b"\r\n\r\n" in received else b""
    if b"transfer-encoding: chunked" in received.split(b"\r\n\r\n", 1)[0].lower():
        payload = _dechunk(payload)
    text = payload.decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


def _complete(data):
    """Whether a raw response with a Content-Length has all of its body."""
    head, _, body = data.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return bool(m) and len(body) >= int(m.group(1))


def _dechunk(data):
    out = b""
    while data:
        size_line, _, rest = data.partition(b"\r\n")
        try:
            size = int(size_line.split(b";")[0], 16)
        except ValueError:
            break
        if size == 0:
            break
        out += rest[:size]
        data = rest[size + 2:]
    return out


def openai_error_shape(body, what):
    """Checks `{"error": {"message", "type", "param", "code"}}`; returns the inner object."""
    expect(isinstance(body, dict) and isinstance(body.get("error"), dict),
           f"{what}: body is not OpenAI's error object: {body!r}")
    err = body["error"]
    for key in ("message", "type", "param", "code"):
        expect(key in err, f"{what}: error object lacks `{key}`: {err!r}")
    expect(isinstance(err["message"], str) and err["message"], f"{what}: empty error message: {err!r}")
    return err


def status_error(exc_type, status, call, what):
    """Runs `call`, which must raise `exc_type` with HTTP `status`; returns the error object."""
    try:
        call()
    except exc_type as exc:
        expect(exc.status_code == status, f"{what}: HTTP {exc.status_code}, wanted {status}")
        return openai_error_shape(exc.response.json(), what)
    except openai.APIStatusError as exc:
        raise CheckFailed(f"{what}: {type(exc).__name__} HTTP {exc.status_code}, wanted "
                          f"{exc_type.__name__} {status}: {exc.response.text[:300]}") from exc
    raise CheckFailed(f"{what}: succeeded, wanted {exc_type.__name__} {status}")


def version_of(value):
    expect(value is not None, "no weight_version in the response")
    try:
        return int(str(value))
    except ValueError as exc:
        raise CheckFailed(f"weight_version {value!r} is not an integer") from exc


# --- the checks ------------------------------------------------------------------------------

def run_checks(args):
    root = args.base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    client = openai.OpenAI(base_url=root + "/v1", api_key="EMPTY", max_retries=0, timeout=120)
    state = {"model": args.model}
    results, failures = {}, []

    def check(name):
        def wrap(fn):
            start = time.time()
            try:
                detail = fn()
                results[name] = {"ok": True, "seconds": round(time.time() - start, 3), **(detail or {})}
            except Exception as exc:  # every failure is reported, then the next check runs
                msg = str(exc) if isinstance(exc, CheckFailed) else f"{type(exc).__name__}: {exc}"
                if not isinstance(exc, CheckFailed):
                    msg += "\n" + traceback.format_exc(limit=3)
                results[name] = {"ok": False, "error": msg}
                failures.append(f"{name}: {msg}")
            return fn
        return wrap

    @check("health")
    def _():
        status, body = raw(root, "GET", "/health")
        expect(status == 200, f"GET /health: HTTP {status}: {body!r}")
        return {}

    @check("models.list")
    def _():
        models = [m.id for m in client.models.list()]
        expect(models, "/v1/models lists no model")
        if state["model"] is None:
            state["model"] = models[0]
        expect(state["model"] in models, f"{state['model']!r} not in /v1/models: {models}")
        return {"models": models}

    model = lambda: state["model"] or "default"  # noqa: E731 - set by models.list
    messages = [{"role": "user", "content": "What is 2 + 2?"}]

    @check("chat")
    def _():
        r = client.chat.completions.create(model=model(), messages=messages, max_tokens=12, temperature=0, seed=3)
        expect(r.object == "chat.completion", f"object {r.object!r}")
        expect(len(r.choices) == 1, f"{len(r.choices)} choices")
        c = r.choices[0]
        expect(c.message.role == "assistant", f"role {c.message.role!r}")
        expect(isinstance(c.message.content, str), f"content {c.message.content!r}")
        expect(c.finish_reason in ("stop", "length"), f"finish_reason {c.finish_reason!r}")
        expect(r.usage and r.usage.completion_tokens >= 1 and r.usage.prompt_tokens >= 1, f"usage {r.usage!r}")
        expect(r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens, f"usage {r.usage!r}")
        state["chat_text"] = c.message.content
        state["chat_finish"] = c.finish_reason
        return {"completion_tokens": r.usage.completion_tokens, "finish_reason": c.finish_reason}

    @check("chat.stream")
    def _():
        stream = client.chat.completions.create(
            model=model(), messages=messages, max_tokens=12, temperature=0, seed=3, stream=True
        )
        text, chunks, finishes, ids, last_with_choices = "", 0, [], set(), 0
        for chunk in stream:
            chunks += 1
            ids.add(chunk.id)
            if chunk.choices:
                last_with_choices = chunks
            expect(chunk.object == "chat.completion.chunk", f"chunk object {chunk.object!r}")
            for ch in chunk.choices:
                expect(ch.index == 0, f"chunk choice index {ch.index}")
                if ch.delta and ch.delta.content:
                    text += ch.delta.content
                if ch.finish_reason is not None:
                    finishes.append((chunks, ch.finish_reason))
        expect(chunks >= 2, f"only {chunks} chunks")
        expect(len(ids) == 1, f"chunks carry {len(ids)} different ids")
        expect(len(finishes) == 1, f"finish_reason set on {len(finishes)} chunks: {finishes}")
        expect(finishes[0][0] == last_with_choices,
               f"finish_reason on chunk {finishes[0][0]}, but chunk {last_with_choices} is the last with choices")
        expect(finishes[0][1] in ("stop", "length"), f"finish_reason {finishes[0][1]!r}")
        expect("chat_text" in state, "no non-streamed text to compare with (check `chat` failed)")
        expect(text == state["chat_text"], f"streamed {text!r} != non-streamed {state['chat_text']!r}")
        expect(finishes[0][1] == state["chat_finish"], f"finish {finishes[0][1]} != {state['chat_finish']}")
        return {"chunks": chunks, "finish_chunk": last_with_choices, "text_chars": len(text)}

    @check("chat.n_logprobs")
    def _():
        r = client.chat.completions.create(
            model=model(), messages=messages, max_tokens=6, temperature=1.0, seed=5, n=2, logprobs=True, top_logprobs=2
        )
        expect(sorted(c.index for c in r.choices) == [0, 1], f"indexes {[c.index for c in r.choices]}")
        for c in r.choices:
            expect(c.logprobs is not None and c.logprobs.content is not None, f"choice {c.index}: no logprobs")
            for entry in c.logprobs.content:
                expect(entry.logprob <= 1e-6, f"logprob {entry.logprob} > 0")
                expect(1 <= len(entry.top_logprobs) <= 3, f"{len(entry.top_logprobs)} top_logprobs for top_logprobs=2")
        total = sum(len(c.logprobs.content) for c in r.choices)
        expect(r.usage.completion_tokens == total, f"usage {r.usage.completion_tokens} != {total} logprob entries")
        return {"completion_tokens": total}

    @check("completions.logprobs")
    def _():
        r = client.completions.create(model=model(), prompt="Hello", max_tokens=8, logprobs=1, temperature=0, seed=1)
        expect(r.object == "text_completion", f"object {r.object!r}")
        c = r.choices[0]
        lp = c.logprobs
        expect(lp is not None, "no logprobs")
        n = r.usage.completion_tokens
        lens = {k: len(getattr(lp, k) or []) for k in ("tokens", "token_logprobs", "top_logprobs", "text_offset")}
        expect(all(v == n for v in lens.values()), f"lengths {lens} != completion_tokens {n}")
        expect(all(x <= 1e-6 for x in lp.token_logprobs), f"positive logprob in {lp.token_logprobs}")
        expect(all(1 <= len(t) <= 2 for t in lp.top_logprobs), f"top_logprobs sizes {[len(t) for t in lp.top_logprobs]}")
        token_ids = extra(c, "token_ids")
        expect(isinstance(token_ids, list) and len(token_ids) == n, f"choice token_ids {token_ids!r} (n {n})")
        state["version"] = version_of(extra(r, "weight_version"))
        return {"completion_tokens": n, "weight_version": state["version"]}

    @check("completions.n3")
    def _():
        r = client.completions.create(model=model(), prompt="Hi", n=3, max_tokens=4, temperature=1.0, seed=7)
        idx = sorted(c.index for c in r.choices)
        expect(idx == [0, 1, 2], f"indexes {idx}")
        tokens = sum(len(extra(c, "token_ids") or []) for c in r.choices)
        expect(r.usage.completion_tokens == tokens, f"usage {r.usage.completion_tokens} != {tokens} token_ids")
        return {"choices": len(r.choices)}

    @check("completions.token_id_prompts")
    def _():
        r = client.completions.create(model=model(), prompt=[[1, 2, 3]], max_tokens=4, temperature=0)
        expect(len(r.choices) == 1, f"{len(r.choices)} choices for one id prompt")
        expect(r.usage.prompt_tokens == 3, f"prompt_tokens {r.usage.prompt_tokens}, wanted 3")
        r2 = client.completions.create(model=model(), prompt=[[1, 2, 3], [4, 5, 6, 7]], max_tokens=4, temperature=0)
        expect(sorted(c.index for c in r2.choices) == [0, 1], f"indexes {[c.index for c in r2.choices]}")
        expect(r2.usage.prompt_tokens == 7, f"prompt_tokens {r2.usage.prompt_tokens}, wanted 7")
        r3 = client.completions.create(model=model(), prompt=[1, 2, 3], max_tokens=4, temperature=0)
        expect(r3.choices[0].text == r.choices[0].text, "flat id list differs from the nested one")
        return {}

    @check("completions.return_tokens_as_token_ids")
    def _():
        r = client.completions.create(
            model=model(), prompt="Hi", max_tokens=5, logprobs=1, temperature=0,
            extra_body={"return_tokens_as_token_ids": True},
        )
        c = r.choices[0]
        tokens = c.logprobs.tokens
        expect(tokens and all(re.fullmatch(r"token_id:\d+", t) for t in tokens), f"tokens {tokens!r}")
        ids = [int(t.split(":")[1]) for t in tokens]
        token_ids = extra(c, "token_ids")
        expect(token_ids is None or list(token_ids) == ids, f"token_ids {token_ids} != {ids}")
        return {"tokens": tokens}

    @check("error.unknown_model")
    def _():
        err = status_error(openai.NotFoundError, 404, lambda: client.completions.create(
            model="no-such-model", prompt="x", max_tokens=1), "completions, unknown model")
        status_error(openai.NotFoundError, 404, lambda: client.chat.completions.create(
            model="no-such-model", messages=messages, max_tokens=1), "chat, unknown model")
        return {"error": err}

    @check("error.invalid_temperature")
    def _():
        err = status_error(openai.BadRequestError, 400, lambda: client.completions.create(
            model=model(), prompt="x", max_tokens=1, temperature=-1), "temperature -1")
        expect(err["param"] == "temperature", f"param {err['param']!r}, wanted 'temperature'")
        expect("temperature" in err["message"], f"message does not name temperature: {err['message']!r}")
        err2 = status_error(openai.BadRequestError, 400, lambda: client.chat.completions.create(
            model=model(), messages=messages, max_tokens=1, temperature=-1), "chat temperature -1")
        expect(err2["param"] == "temperature", f"chat: param {err2['param']!r}, wanted 'temperature'")
        return {"error": err}

    @check("error.max_tokens_too_large")
    def _():
        err = status_error(openai.BadRequestError, 400, lambda: client.completions.create(
            model=model(), prompt="x", max_tokens=args.max_tokens_limit + 1), "max_tokens over the limit")
        expect("max_tokens" in err["message"] or err["param"] == "max_tokens", f"does not name max_tokens: {err!r}")
        return {"error": err}

    @check("error.body_too_large")
    def _():
        status, body = oversized_post(root, "/v1/completions", args.max_body_bytes + 4096)
        expect(status == 413, f"HTTP {status}, wanted 413: {str(body)[:300]}")
        err = openai_error_shape(body, "413")
        status, _ = raw(root, "GET", "/health")
        expect(status == 200, f"/health after 413: HTTP {status}")
        return {"error": err}

    @check("error.malformed_json")
    def _():
        status, body = raw(root, "POST", "/v1/completions", b'{"model": "x", "prompt": ')
        expect(status == 400, f"HTTP {status}, wanted 400: {str(body)[:300]}")
        err = openai_error_shape(body, "malformed JSON")
        status, body = raw(root, "POST", "/v1/chat/completions", b"not json at all")
        expect(status == 400, f"chat: HTTP {status}, wanted 400: {str(body)[:300]}")
        openai_error_shape(body, "chat malformed JSON")
        return {"error": err}

    @check("reload.bad_path")
    def _():
        status, body = raw(root, "POST", "/update_weights_from_disk", {"model_path": "/nonexistent/aha-no-model"})
        expect(status == 400, f"HTTP {status}, wanted 400: {body!r}")
        expect(isinstance(body, dict) and body.get("success") is False, f"body {body!r}")
        expect(isinstance(body.get("message"), str) and body["message"], f"no message: {body!r}")
        r = client.completions.create(model=model(), prompt="still there?", max_tokens=3, temperature=0)
        expect(len(r.choices) == 1, "no completion after a failed reload")
        version = version_of(extra(r, "weight_version"))
        if "version" in state:
            expect(version == state["version"], f"weight_version moved {state['version']} -> {version} on a failed reload")
        state["version"] = version
        return {"message": body["message"], "weight_version": version}

    @check("reload.good_path")
    def _():
        expect("version" in state, "no weight_version seen before the reload")
        status, body = raw(root, "POST", "/update_weights_from_disk", {"model_path": args.model_dir}, timeout=300)
        expect(status == 200, f"HTTP {status}, wanted 200: {body!r}")
        expect(isinstance(body, dict) and body.get("success") is True, f"body {body!r}")
        new = version_of(body.get("weight_version"))
        expect(new == state["version"] + 1, f"weight_version {state['version']} -> {new}, wanted +1")
        r = client.completions.create(model=model(), prompt="after reload", max_tokens=3, temperature=0)
        served = version_of(extra(r, "weight_version"))
        expect(served == new, f"completion after reload reports weight_version {served}, wanted {new}")
        return {"weight_version": new}

    return results, failures, state["model"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base_url", help="server root, e.g. http://127.0.0.1:8000")
    ap.add_argument("model", nargs="?", help="served model name (default: the first listed)")
    ap.add_argument("--model-dir", required=True, help="the server's model directory (reloaded)")
    ap.add_argument("--max-body-bytes", type=int, default=1048576, help="the server's --max-body-bytes")
    ap.add_argument("--max-tokens-limit", type=int, default=4096, help="the server's --max-tokens-limit")
    args = ap.parse_args()
    results, failures, model = run_checks(args)
    summary = {
        "ok": not failures,
        "openai_version": openai.__version__,
        "base_url": args.base_url,
        "model": model,
        "passed": sum(1 for r in results.values() if r["ok"]),
        "failed": len(failures),
        "checks": results,
    }
    print(json.dumps(summary, indent=2, default=str))
    if failures:
        print(f"openai_client_check: {len(failures)} of {len(results)} checks failed:", file=sys.stderr)
        for f in failures:
            print(f"  - {f}", file=sys.stderr)
        sys.exit(1)
    print(f"openai_client_check: all {len(results)} checks passed", file=sys.stderr)


if __name__ == "__main__":
    main()
