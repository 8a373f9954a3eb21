"""Tool-call replies that loop, through the whole server in process (FastAPI's TestClient) over a
scripted model (support.fake_model.ScriptedModel: the reply is the text the test gives, as far as
the grammar allows) and real tokenizers: a model that writes a call it already made ends its reply
right there with finish_reason "tool_calls" and the distinct calls, on /v1/chat/completions (whole
and streamed) and Ollama's /api/chat; a reply holds at most MAX_PARALLEL_CALLS calls. Each call
syntax: the generic format (SmolLM2), Qwen's own <tool_call> blocks (its template, its tag tokens),
Llama 3.1 JSON. Then the neighbours: a call written inside a thinking section is not made, Qwen's
tag tokens are what its grammar allows, an empty `tools` list is no tools."""

from __future__ import annotations

import dataclasses
import json
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from support.fake_model import ScriptedModel
from support.model_files import qwen_vocab_model, smollm2_q4_1
from sysinfer.config import ServerConfig
from sysinfer.model.gguf_header import read_gguf_header
from sysinfer.model.tokenizer import Tokenizer
from sysinfer.structured.tools import MAX_PARALLEL_CALLS, choose_syntax

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
QUESTION = [{"role": "user", "content": "What is the weather in Paris and in Rome?"}]

# A template that renders `tools` its own way and never speaks of <tool_call>: Llama 3.1's call syntax.
LLAMA31_TEMPLATE = ("{% if tools %}Functions: {% for t in tools %}{{ t | tojson }}{% endfor %}\n{% endif %}"
                    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                    "<|im_start|>assistant\n")


def tokenizer(kind: str) -> Tokenizer:
    path = qwen_vocab_model() if kind == "qwen" else smollm2_q4_1()
    tok = Tokenizer.from_metadata(read_gguf_header(path))
    if kind == "llama31":
        tok.chat_template = LLAMA31_TEMPLATE
    return tok


def hermes(city: str, args_key: str = "arguments") -> str:
    return f'<tool_call>\n{{"name": "get_weather", "{args_key}": {{"city": "{city}"}}}}\n</tool_call>'


def llama(city: str) -> str:
    return f'{{"name": "get_weather", "parameters": {{"city": "{city}"}}}}'


CALL = {"smollm2": hermes, "qwen": hermes, "llama31": llama}


class Server:
    """The app over one ScriptedModel: `say(text)` sets what the model writes next."""

    def __init__(self, kind: str, monkeypatch, template: str | None = None, **config):
        import sysinfer.startup as startup
        from sysinfer.server.app import create_app

        self.tok = tokenizer(kind)
        self.tok.chat_template = template or self.tok.chat_template
        self.model = ScriptedModel(n_vocab=self.tok.vocab_size, eos=min(self.tok.stop_ids))
        served = startup.ServingModel(self.model, self.tok, "m")
        monkeypatch.setattr(startup, "load_serving_model", lambda cfg, progress=True: served)
        self.client = TestClient(create_app(ServerConfig(model="/m/scripted.gguf", **config).validate()))
        self.client.__enter__()
        deadline = time.time() + 30
        while self.client.get("/health").status_code != 200:
            assert time.time() < deadline, "the app did not become ready"
            time.sleep(0.02)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, allow_special=True)  # tags as the tokens a model writes (Qwen's <tool_call>)

    def say(self, text: str) -> None:
        self.model.script = self.encode(text)

    def close(self):
        self.client.__exit__(None, None, None)


@pytest.fixture(params=["smollm2", "qwen", "llama31"])
def server(request, monkeypatch):
    s = Server(request.param, monkeypatch)
    s.kind = request.param
    yield s
    s.close()


def chat(server, stream=False, **kw):
    body = {"model": "m", "messages": QUESTION, "tools": [WEATHER], "max_tokens": 400, "temperature": 0,
            "parallel_tool_calls": True, "stream": stream, **kw}
    r = server.client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    if not stream:
        return r.json()
    return [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]


def streamed_calls(events) -> tuple[list[tuple[str, str]], str | None, str]:
    calls: dict[int, list[str]] = {}
    finish, content = None, ""
    for e in events:
        for c in e["choices"]:
            content += c["delta"].get("content") or ""
            for tc in c["delta"].get("tool_calls") or []:
                call = calls.setdefault(tc["index"], ["", ""])
                call[0] += tc["function"].get("name") or ""
                call[1] += tc["function"].get("arguments") or ""
            finish = c["finish_reason"] or finish
    return [tuple(v) for _, v in sorted(calls.items())], finish, content


@pytest.mark.parametrize("choice", ["required", "auto"])
def test_a_repeated_call_ends_the_reply_with_the_distinct_calls(server, choice):
    """Paris, Rome, then Paris again and on and on: the reply ends at the second Paris, with the two
    calls and finish_reason "tool_calls", whole and streamed; the tokens after it are never computed
    (completion_tokens stops there, far below max_tokens); no call text comes back as content."""
    call = CALL[server.kind]
    server.say("\n".join([call("Paris"), call("Rome")] + [call("Paris")] * 12))
    r = chat(server, tool_choice=choice)
    choice0 = r["choices"][0]
    got = [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in choice0["message"]["tool_calls"]]
    assert got == [("get_weather", {"city": "Paris"}), ("get_weather", {"city": "Rome"})]
    assert choice0["finish_reason"] == "tool_calls" and choice0["message"]["content"] is None
    # the reply ended on the repeated call's last token: its text, not max_tokens
    upto = "\n".join([call("Paris"), call("Rome"), call("Paris")])
    upto = upto[: upto.rindex("}") + 1]
    assert r["usage"]["completion_tokens"] == len(server.encode(upto))
    calls, finish, content = streamed_calls(chat(server, stream=True, tool_choice=choice))
    assert [(n, json.loads(a)) for n, a in calls] == got and finish == "tool_calls" and content == ""


def test_the_same_call_again_with_other_whitespace_or_key_order_is_a_repeat(server):
    if server.kind == "llama31":
        again = '{"parameters": {"city": "Paris"}, "name": "get_weather"}'
    else:
        again = '<tool_call>\n{"arguments": {"city":"Paris"}, "name": "get_weather"}\n</tool_call>'
    server.say("\n".join([CALL[server.kind]("Paris"), again] + [CALL[server.kind]("Oslo")] * 3))
    r = chat(server, tool_choice="required")
    assert len(r["choices"][0]["message"]["tool_calls"]) == 1 and r["choices"][0]["finish_reason"] == "tool_calls"


def test_a_reply_holds_at_most_max_parallel_calls(server):
    """A model that keeps making new calls (another city each time) stops after MAX_PARALLEL_CALLS."""
    cities = [f"city{i}" for i in range(MAX_PARALLEL_CALLS + 8)]
    server.say("\n".join(CALL[server.kind](c) for c in cities))
    r = chat(server, tool_choice="required", max_tokens=2000)
    calls = r["choices"][0]["message"]["tool_calls"]
    assert [json.loads(c["function"]["arguments"])["city"] for c in calls] == cities[:MAX_PARALLEL_CALLS]
    assert r["choices"][0]["finish_reason"] == "tool_calls"


def test_ollama_chat_ends_at_a_repeated_call(server):
    call = CALL[server.kind]
    server.say("\n".join([call("Paris"), call("Rome")] + [call("Paris")] * 12))
    body = {"model": "m", "messages": QUESTION, "tools": [WEATHER], "options": {"temperature": 0, "num_predict": 400}}
    whole = server.client.post("/api/chat", json={**body, "stream": False}).json()
    lines = [json.loads(x) for x in server.client.post("/api/chat", json={**body, "stream": True}).text.splitlines()]
    streamed = [c for line in lines for c in line.get("message", {}).get("tool_calls") or []]
    # Ollama has no parallel_tool_calls: several calls where the template writes them back (Qwen's)
    expected = ["Paris", "Rome"] if choose_syntax(server.tok).parallel_calls else ["Paris"]
    for calls, last in ((whole["message"]["tool_calls"], whole), (streamed, lines[-1])):
        assert [c["function"]["arguments"]["city"] for c in calls] == expected
        assert last["done"] and last["done_reason"] == "stop" and last["eval_count"] < 200


# ---- calls inside a thinking section ----

# SmolLM2's own format, with a template that speaks of </think> and leaves the opening to the model
# (its vocabulary has no tag tokens: the tags are text); Qwen3 has them as tokens.
THINKS_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                   "{# a model that thinks writes <think> ... </think> first #}<|im_start|>assistant\n")
THOUGHT_CALL = hermes("Paris")


@pytest.fixture(params=["smollm2", "qwen"])
def thinking_kind(request):
    return request.param


def thinking_server(kind, monkeypatch, **config):
    s = Server(kind, monkeypatch, template=THINKS_TEMPLATE if kind == "smollm2" else None, **config)
    s.kind = kind
    return s


@pytest.mark.parametrize("reasoning_format", ["deepseek", "none"])
def test_a_call_written_inside_the_thinking_section_is_not_made(thinking_kind, monkeypatch, reasoning_format):
    """<think> ... <tool_call>{...}</tool_call> ... </think> then an answer: the model only thought
    about a call. No call is made (whole or streamed); the section is reasoning (or left in content
    with --reasoning-format none), the answer is content."""
    s = thinking_server(thinking_kind, monkeypatch, reasoning_format=reasoning_format)
    try:
        s.say(f"<think>\nI could call {THOUGHT_CALL}\nNo need.\n</think>\n\nIt is sunny in Paris.")
        r = chat(s, tool_choice="auto")
        msg = r["choices"][0]["message"]
        assert not msg.get("tool_calls") and r["choices"][0]["finish_reason"] == "stop", msg
        assert msg["content"].endswith("It is sunny in Paris.")
        if reasoning_format == "deepseek" and thinking_kind == "qwen":  # tags as tokens: the section apart
            assert msg["content"] == "It is sunny in Paris." and "<tool_call>" in msg["reasoning_content"]
        # (tags spelled in text under a grammar that allows text: the section stays in content, as
        # request_state's rule for text tags under an output grammar has it; still no call)
        calls, finish, content = streamed_calls(chat(s, stream=True, tool_choice="auto"))
        assert calls == [] and finish == "stop" and content == msg["content"]
        # after the section, a call is a call
        s.say(f"<think>\nI need the weather.\n</think>\n\n{THOUGHT_CALL}")
        r = chat(s, tool_choice="auto")
        assert [c["function"]["name"] for c in r["choices"][0]["message"]["tool_calls"]] == ["get_weather"]
        assert r["choices"][0]["finish_reason"] == "tool_calls"
    finally:
        s.close()


def test_qwens_own_tag_tokens_are_allowed_and_control_tokens_are_not():
    """Qwen writes <tool_call> as one token (151657, user-defined): the tools grammar allows that
    token, as the first and only token of a required call (it was forbidden, and Qwen could call
    only by spelling the tag in pieces); a control token (<|im_end|>) is still never text, not even
    inside a JSON string."""
    from sysinfer.structured import tools as T
    from sysinfer.structured.constraints import compile_constraint, from_request
    from sysinfer.structured.grammar_state import GrammarState

    tok = tokenizer("qwen")
    tag, im_end = tok.special_tokens["<tool_call>"], tok.special_tokens["<|im_end|>"]
    plan = T.plan_from_request([WEATHER], "required", None)
    syntax = T.choose_syntax(tok)
    state = GrammarState(compile_constraint(tok, T.tool_grammar(syntax, plan)), tok.vocab_size)
    assert state.allowed()[tag] and state.allowed()[tok.special_tokens["<think>"]]  # Qwen3 thinks first, or not
    no_thinking = dataclasses.replace(syntax, think=None)
    state = GrammarState(compile_constraint(tok, T.tool_grammar(no_thinking, plan)), tok.vocab_size)
    assert np.flatnonzero(state.allowed()).tolist() == [tag]
    state = GrammarState(compile_constraint(tok, from_request(guided_regex=r'"[^"]*"')), tok.vocab_size)
    state.consume(tok.encode('"')[0])
    allowed = state.allowed()
    assert allowed[tag] and not allowed[im_end]


def test_an_empty_tools_list_is_no_tools(monkeypatch):
    """`tools: []` (agents with no function configured send it): a plain reply with tool_choice
    unset, auto or none, on /v1/chat/completions and /api/chat; a required or named call of no
    function is a 400 naming tool_choice (it was a 400 naming tools for every one of them)."""
    s = Server("smollm2", monkeypatch)
    try:
        s.say("Hello there.")
        for choice in ({}, {"tool_choice": "auto"}, {"tool_choice": "none"}):
            r = s.client.post("/v1/chat/completions", json={"model": "m", "messages": QUESTION, "tools": [],
                                                            "max_tokens": 20, **choice})
            assert r.status_code == 200, r.text
            msg = r.json()["choices"][0]["message"]
            assert msg["content"] == "Hello there." and "tool_calls" not in msg
        for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
            r = s.client.post("/v1/chat/completions", json={"model": "m", "messages": QUESTION, "tools": [],
                                                            "tool_choice": choice})
            assert r.status_code == 400 and r.json()["error"]["param"] == "tool_choice", r.text
        r = s.client.post("/api/chat", json={"model": "m", "messages": QUESTION, "tools": [], "stream": False})
        assert r.status_code == 200 and r.json()["message"]["content"] == "Hello there.", r.text
    finally:
        s.close()


OPENS_SECTION_TEMPLATE = THINKS_TEMPLATE + "<think>\n"  # DeepSeek-R1 / Qwen3-Thinking: the prompt opens it


@pytest.mark.parametrize("template,reasoning_apart,second_section", [
    (OPENS_SECTION_TEMPLATE, True, False),   # the engine holds the section; the grammar sees the answer
    (OPENS_SECTION_TEMPLATE, False, True),   # --reasoning-format none: the whole reply is the grammar's
    (THINKS_TEMPLATE, True, True),           # the reply may open its section in text, through the grammar
])
def test_an_answer_after_an_engine_held_section_cannot_open_another(template, reasoning_apart, second_section):
    """A thinking model whose prompt opens the section, a call forced by tool_choice: the engine keeps
    the section out of the grammar and the parser, so what they see is the answer, where a second
    `<think>` has no place. The tools grammar allowed one there (the syntax's optional section), and
    a small model under a reasoning budget then thought until max_tokens instead of calling
    (tests/e2e/test_langchain.py, SmolLM2 on an Intel Xeon). With the section left in the text, or
    opened by the reply itself, the grammar still takes it."""
    from sysinfer.server.preparation import prepare_chat
    from sysinfer.server.protocol import ChatCompletionRequest

    tok = tokenizer("smollm2")
    tok.chat_template = template
    req = ChatCompletionRequest.model_validate({"model": "m", "messages": QUESTION, "tools": [WEATHER],
                                                "tool_choice": {"type": "function", "function": {"name": "get_weather"}}})
    _, grammar, (syntax, _) = prepare_chat(tok, req, reasoning_apart)
    assert (syntax.think is not None) == second_section
    tag, call = tok.encode("<think>\nhm\n</think>"), tok.encode(hermes("Paris"))
    # how many of the tokens the matcher takes from where the reply's grammar starts ("<" also
    # starts "<tool_call>": one token of the tag, or all of them and the call after)
    assert grammar.validate_tokens(tag + call) == (len(tag + call) if second_section else 1)
    assert grammar.validate_tokens(call) == len(call)
