"""logprobs, n, logit_bias and the error codes, with the real `openai` client against a real server
on SmolLM2 (issue 13, part B)."""

from __future__ import annotations

import ast
import json
import math
import re
import subprocess
import uuid
from pathlib import Path

import httpx
import openai
import pytest

from support.servers import start_server

KEY = "surface-key"


@pytest.fixture(scope="module")
def server():
    proc, base, _ = start_server(SYSINFER_API_KEY=KEY, SYSINFER_MAX_BATCH="4", SYSINFER_MAX_BODY_BYTES="65536")
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)


def chat(client, content, **kw):
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": content}], **kw)


def entries_bytes(entries) -> bytes:
    return bytes(b for e in entries for b in e.bytes)


@pytest.mark.parametrize("question", ["What is the capital of France?", "用中文说你好，介绍一下北京。"])
def test_chat_logprobs_greedy_token_is_top_1_and_bytes_give_the_text(client, question):
    r = chat(client, question, max_tokens=24, temperature=0, logprobs=True, top_logprobs=5)
    choice = r.choices[0]
    content = choice.logprobs.content
    assert len(content) == r.usage.completion_tokens  # the end-of-turn token is counted in neither
    joined, text = entries_bytes(content), choice.message.content.encode()
    assert joined.startswith(text)
    if joined != text:  # stopped at max_tokens inside a character: the text leaves the incomplete bytes out
        assert choice.finish_reason == "length" and len(joined) - len(text) < 4
        with pytest.raises(UnicodeDecodeError, match="unexpected end of data"):
            joined[len(text):].decode("utf-8")
    for e in content:
        assert len(e.top_logprobs) == 5 and e.logprob <= 0
        assert e.top_logprobs[0].token == e.token and e.top_logprobs[0].logprob == pytest.approx(e.logprob)
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        assert sum(math.exp(t.logprob) for t in e.top_logprobs) <= 1.0 + 1e-6
    if not question.isascii():  # characters split over byte tokens: only the joined bytes decode
        assert any(not _decodes(e.bytes) for e in content), [e.bytes for e in content]


def _decodes(raw: list[int]) -> bool:
    try:
        bytes(raw).decode("utf-8")
        return True
    except UnicodeDecodeError:
        return False


def test_streamed_chat_logprobs_equal_the_whole_answer(client):
    kw = dict(max_tokens=16, temperature=0, logprobs=True, top_logprobs=2)
    whole = chat(client, "Name three colours.", **kw).choices[0]
    chunks = [c for c in chat(client, "Name three colours.", stream=True, **kw) if c.choices]
    streamed = [e for c in chunks if c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in whole.logprobs.content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in whole.logprobs.content], abs=1e-3)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.message.content


def test_no_logprobs_unless_asked(client):
    assert chat(client, "Hi", max_tokens=3).choices[0].logprobs is None
    assert chat(client, "Hi", max_tokens=3, logprobs=False, top_logprobs=0).choices[0].logprobs is None


def test_logprobs_are_the_models_not_the_samplers(client):
    """The documented choice (engine/logprobs.py): raw log-softmax, before temperature / penalties / bias."""
    greedy = chat(client, "Say a number.", max_tokens=1, temperature=0, logprobs=True, top_logprobs=4)
    hot = chat(client, "Say a number.", max_tokens=1, temperature=1.9, top_p=0.5, frequency_penalty=1.0, seed=3,
               logprobs=True, top_logprobs=4, logit_bias={"28": -50})
    a, b = greedy.choices[0].logprobs.content[0], hot.choices[0].logprobs.content[0]
    assert [t.token for t in a.top_logprobs] == [t.token for t in b.top_logprobs]
    assert [t.logprob for t in a.top_logprobs] == pytest.approx([t.logprob for t in b.top_logprobs], abs=1e-3)


def test_completion_legacy_logprobs(client):
    kw = dict(model="m", prompt="The capital of France is", max_tokens=8, temperature=0, logprobs=3)
    r = client.completions.create(**kw)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == 8
    assert "".join(lp.tokens) == r.choices[0].text
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(8)]
    for token, logprob, top in zip(lp.tokens, lp.token_logprobs, lp.top_logprobs):
        assert 1 <= len(top) <= 4 and top[token] == pytest.approx(logprob) and max(top.values()) == top[token]
    chunks = [c for c in client.completions.create(stream=True, **kw) if c.choices]
    streamed = {k: [v for c in chunks if c.choices[0].logprobs for v in getattr(c.choices[0].logprobs, k)]
                for k in ("tokens", "text_offset")}
    assert streamed == {"tokens": lp.tokens, "text_offset": lp.text_offset}


def metric(base: str, name: str) -> float:
    return float(re.search(rf"^{name} (\S+)$", httpx.get(base + "/metrics").text, re.M).group(1))


def test_n_greedy_choices_are_identical_and_the_prompt_is_computed_once(client, server):
    question = f"({uuid.uuid4().hex}) Write one sentence about the sea, please, in plain words."  # never cached
    before = metric(server, "sysinfer_prompt_tokens_computed"), metric(server, "sysinfer_prefix_cache_hit_tokens")
    r = chat(client, question, max_tokens=10, temperature=0, n=3)
    assert [c.index for c in r.choices] == [0, 1, 2]
    assert len({c.message.content for c in r.choices}) == 1 and r.choices[0].message.content
    assert r.usage.completion_tokens % 3 == 0 and 3 <= r.usage.completion_tokens <= 30  # three equal replies
    n_prompt, cached = r.usage.prompt_tokens, r.usage.prompt_tokens_details.cached_tokens
    full = (n_prompt - 1) // 16 * 16  # what choices 1 and 2 find in the prefix cache (16-token blocks)
    computed = metric(server, "sysinfer_prompt_tokens_computed") - before[0]
    hits = metric(server, "sysinfer_prefix_cache_hit_tokens") - before[1]
    assert computed == (n_prompt - cached) + 2 * (n_prompt - full)
    assert hits == cached + 2 * full and full > n_prompt / 2


def test_n_seeded_choices_are_distinct_and_reproducible(client):
    kw = dict(max_tokens=16, temperature=1.0, n=3, seed=77)
    a = [c.message.content for c in chat(client, "Tell me a story.", **kw).choices]
    b = [c.message.content for c in chat(client, "Tell me a story.", **kw).choices]
    assert a == b and len(set(a)) == 3
    streamed = ["", "", ""]
    finished = set()
    for c in chat(client, "Tell me a story.", stream=True, **kw):
        for ch in c.choices:
            streamed[ch.index] += ch.delta.content or ""
            if ch.finish_reason:
                finished.add(ch.index)
    assert streamed == a and finished == {0, 1, 2}


def test_n_completions_with_usage(client):
    r = client.completions.create(model="m", prompt="Once upon a time", max_tokens=6, temperature=0.8, seed=1, n=2)
    assert [c.index for c in r.choices] == [0, 1] and r.usage.completion_tokens == 12


def test_logit_bias_bans_and_forces(client):
    first = chat(client, "What is the capital of France?", max_tokens=1, temperature=0, logprobs=True)
    banned = first.choices[0].logprobs.content[0]
    token_id = _token_id(client, banned.token)
    again = chat(client, "What is the capital of France?", max_tokens=1, temperature=0, logprobs=True,
                 logit_bias={str(token_id): -100})
    assert again.choices[0].logprobs.content[0].token != banned.token
    forced = chat(client, "What is the capital of France?", max_tokens=4, temperature=0.7, seed=2,
                  logit_bias={str(_token_id(client, " banana")): 100})
    assert forced.choices[0].message.content == " banana" * 4


def _token_id(client, token: str) -> int:
    """The id of a one-token text in SmolLM2's vocabulary."""
    from support.model_files import smollm2_q4_0
    from sysinfer.model.gguf_header import read_gguf_header
    from sysinfer.model.tokenizer import Tokenizer

    tok = Tokenizer.from_metadata(read_gguf_header(smollm2_q4_0()))
    return next(i for i in range(tok.vocab_size) if tok.token_bytes(i) == token.encode())


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("path,body,status,code,param", [
    ("/v1/chat/completions", b"{not json", 400, "invalid_json", None),
    ("/v1/chat/completions", b"[1, 2]", 400, "invalid_json", None),
    ("/v1/chat/completions", b"[" * 60000, 400, "invalid_json", None),
    ("/v1/chat/completions", {}, 400, "missing_required_parameter", "messages"),
    ("/v1/chat/completions", {"messages": "hi"}, 400, "invalid_type", "messages"),
    ("/v1/chat/completions", {"messages": []}, 400, "invalid_value", "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, 400, "invalid_value",
     "messages.0.role"),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": "ten"}, 400, "invalid_type", "max_tokens"),
    ("/v1/chat/completions", {"messages": HI, "temperature": -1}, 400, "invalid_value", "temperature"),
    ("/v1/chat/completions", {"messages": HI, "stop": ["x"] * 17}, 400, "invalid_value", "stop"),
    ("/v1/chat/completions", {"messages": HI, "n": 0}, 400, "invalid_value", "n"),
    ("/v1/chat/completions", {"messages": HI, "n": 17}, 400, "invalid_value", "n"),
    ("/v1/chat/completions", {"messages": HI, "logprobs": "very"}, 400, "invalid_type", "logprobs"),
    ("/v1/chat/completions", {"messages": HI, "logprobs": True, "top_logprobs": 21}, 400, "invalid_value",
     "top_logprobs"),
    ("/v1/chat/completions", {"messages": HI, "top_logprobs": 3}, 400, "invalid_value", "top_logprobs"),
    ("/v1/chat/completions", {"messages": HI, "logit_bias": {"abc": 1}}, 400, "invalid_value", "logit_bias"),
    ("/v1/chat/completions", {"messages": HI, "logit_bias": {"5": 100.5}}, 400, "invalid_value", "logit_bias"),
    ("/v1/chat/completions", {"messages": HI, "logit_bias": {"5": "x"}}, 400, "invalid_type", "logit_bias.5"),
    ("/v1/chat/completions", {"messages": HI, "logit_bias": {"49152": 1}}, 400, "invalid_value", "logit_bias"),
    ("/v1/chat/completions", {"messages": HI, "logit_bias": [1]}, 400, "invalid_type", "logit_bias"),
    ("/v1/chat/completions", {"messages": HI, "max_tokens": 5000}, 400, "context_length_exceeded", "messages"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x " * 3000}]}, 400,
     "context_length_exceeded", "messages"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 21}, 400, "invalid_value", "logprobs"),
    ("/v1/completions", {"prompt": "hi", "logprobs": True, "max_tokens": 1}, 200, None, None),
    ("/v1/completions", {"prompt": ["a", "b"]}, 400, "invalid_value", "prompt"),
    ("/v1/completions", {"prompt": ""}, 400, "invalid_value", "prompt"),
    ("/v1/completions", {"prompt": "hi", "seed": 2**64}, 400, "invalid_value", "seed"),
    ("/v1/completions", {"prompt": "x" * 70000}, 413, "request_too_large", None),
    ("/v1/nothing", {}, 404, "not_found", None),
], ids=lambda v: v[:30].decode() if isinstance(v, bytes) else str(v)[:40])
def test_every_refusal_has_a_code(server, path, body, status, code, param):
    h = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    raw = body if isinstance(body, bytes) else None
    r = httpx.post(server + path, content=raw, json=None if raw else body, headers=h, timeout=60)
    assert r.status_code == status, r.text
    if status == 200:  # `true` is the integer 1 to pydantic's lax mode, as to Python
        return
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and "Traceback" not in r.text
    assert (err["code"], err["param"]) == (code, param), err


def test_refusals_outside_the_body_have_codes(server):
    assert httpx.post(server + "/v1/completions", json={"prompt": "x"}).json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(server + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_the_openai_client_sees_code_and_param(client):
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, "hi", logit_bias={"5": 300})
    assert info.value.code == "invalid_value" and info.value.param == "logit_bias"
    with pytest.raises(openai.BadRequestError) as info:
        chat(client, "hi", n=99)
    assert info.value.code == "invalid_value" and info.value.param == "n"


def readme_api_examples() -> list[str]:
    """The README API section's examples: each block of lines indented by six spaces, dedented."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    api = readme[readme.index("## API"):readme.index("## Load tests")]
    blocks, current = [], []
    for line in api.splitlines() + [""]:
        if line.startswith("      "):
            current.append(line[6:])
        elif current:
            # a block of one-line calls (chat and legacy logprobs side by side) is one example per line
            blocks += current if all(l.startswith("client.") for l in current) else ["\n".join(current)]
            current = []
    return blocks


def run_python_example(code: str, client, max_tokens: int):
    """Runs an example as written (with max_tokens added to keep it short); returns the value of its
    last line when that is an expression."""
    tree = ast.parse(code.replace("create(", f"create(max_tokens={max_tokens}, "))
    scope = {"client": client, "msgs": [{"role": "user", "content": "Say hi."}]}
    last = tree.body.pop() if isinstance(tree.body[-1], ast.Expr) else None
    exec(compile(tree, "<README>", "exec"), scope)  # noqa: S102 - our own README
    return eval(compile(ast.Expression(last.value), "<README>", "eval"), scope) if last else None  # noqa: S307


def run_curl_example(command: str, server: str) -> dict:
    command = command.replace("\\\n", " ").replace("http://127.0.0.1:7860", server)
    out = subprocess.run(["bash", "-c", command + f" -H 'Authorization: Bearer {KEY}'"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_readme_api_examples(server, client):
    """Every example in the README's API section runs as written (our port and key) and does what
    the text next to it says."""
    checked = set()
    for code in readme_api_examples():
        if code.startswith("curl"):
            body = run_curl_example(code, server)
            if "guided_choice" in code:
                assert body["choices"][0]["message"]["content"] in ("yes", "no"), body
                checked.add("guided_choice")
            elif "logit_bias" in code:
                assert body["choices"][0]["text"] == " banana" * 8, body
                checked.add("logit_bias")
            continue
        if "tools" in code:
            arguments = run_python_example(code, client, 60)
            assert isinstance(json.loads(arguments)["city"], str), arguments
            checked.add("tools")
        elif "response_format" in code:
            r = run_python_example(code, client, 60)
            assert r.choices[0].finish_reason == "stop" and isinstance(json.loads(r.choices[0].message.content)["name"], str)
            checked.add("response_format")
        elif "top_logprobs=5" in code:
            assert len(run_python_example(code, client, 4).choices[0].logprobs.content[0].top_logprobs) == 5
            checked.add("top_logprobs")
        elif "logprobs=3" in code:
            assert len(run_python_example(code, client, 4).choices[0].logprobs.tokens) == 4
            checked.add("legacy logprobs")
        elif "n=3" in code:
            assert [c.index for c in run_python_example(code, client, 4).choices] == [0, 1, 2]
            checked.add("n")
        else:
            pytest.fail(f"a README API example this test does not check: {code}")
    assert checked == {"guided_choice", "logit_bias", "tools", "response_format", "top_logprobs",
                       "legacy logprobs", "n"}
