"""Ollama's native API (issue 27) through the real server (SmolLM2) with the official `ollama` client:
list, chat whole and streamed, `format` as a schema (enforced), tools, generate, show, ps, version,
the management and embedding routes' errors, bad bodies, and the API key."""

from __future__ import annotations

import json

import httpx
import jsonschema
import ollama
import pytest

from support.servers import start_server

KEY = "sk-ollama-test"
NAME = "smollm2"  # served as smollm2:latest
OPTS = {"temperature": 0, "num_predict": 24}
HI = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server():
    proc, base, _ = start_server(SYSINFER_API_KEY=KEY, SYSINFER_MODEL_NAME=NAME)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return ollama.Client(host=server, headers={"Authorization": f"Bearer {KEY}"})


def test_list_show_ps_version(client):
    listed = client.list().models
    assert [m.model for m in listed] == [f"{NAME}:latest"]
    d = listed[0].details
    # the tensors' type: this test file is requantized to Q4_0 and keeps the original's general.file_type (Q4_1)
    assert (d.format, d.family, d.parameter_size, d.quantization_level) == ("gguf", "llama", "135M", "Q4_0")
    assert listed[0].size > 10_000_000
    for name in (NAME, f"{NAME}:latest"):  # `:latest` implied
        shown = client.show(name)
        assert shown.details.family == "llama" and "messages" in shown.template
        assert shown.modelinfo["llama.context_length"] == 2048  # what this server holds (SYSINFER_CTX_SIZE)
        assert shown.modelinfo["general.architecture"] == "llama"
    running = client.ps().models
    assert [m.model for m in running] == [f"{NAME}:latest"] and running[0].size_vram == 0
    assert client._client.get("/api/version").json()["version"]


def test_chat_whole_and_streamed_give_the_same_text(client):
    whole = client.chat(model=NAME, messages=HI, options=OPTS, stream=False)
    assert whole.message.role == "assistant" and whole.message.content.strip()
    assert whole.done and whole.done_reason in ("stop", "length")
    assert whole.prompt_eval_count > 5 and 1 <= whole.eval_count <= 24
    assert whole.total_duration >= whole.eval_duration > 0 and whole.prompt_eval_duration > 0
    parts = list(client.chat(model=f"{NAME}:latest", messages=HI, options=OPTS, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.message.content for p in parts) == whole.message.content
    last = parts[-1]
    assert (last.done_reason, last.eval_count, last.prompt_eval_count) == (
        whole.done_reason, whole.eval_count, whole.prompt_eval_count)


def test_the_server_streams_ndjson_unless_told_not_to(server):
    """Ollama's default is stream: true (the client library always says which it wants; curl doesn't)."""
    r = httpx.post(server + "/api/chat", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                   json={"model": NAME, "messages": HI, "options": OPTS})
    assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert len(lines) > 2 and [x["done"] for x in lines] == [False] * (len(lines) - 1) + [True]
    assert set(lines[-1]) >= {"done_reason", "total_duration", "load_duration", "prompt_eval_count",
                              "prompt_eval_duration", "eval_count", "eval_duration", "created_at", "model"}
    assert lines[-1]["eval_count"] >= len(lines) - 1  # a piece per token that has text


def test_options_reach_the_sampler(client):
    short = client.chat(model=NAME, messages=HI, options={"temperature": 0, "num_predict": 3, "num_ctx": 4096,
                                                           "mirostat": 2}, stream=False)  # unknown: ignored
    assert short.eval_count == 3 and short.done_reason == "length"
    stopped = client.generate(model=NAME, prompt="Count: 1, 2, 3, 4,", raw=True,
                              options={"temperature": 0, "num_predict": 20, "stop": [","]})
    assert "," not in stopped.response and stopped.done_reason == "stop"
    a, b = (client.generate(model=NAME, prompt="Tell me a story.", options={"temperature": 1.2, "seed": 7,
                                                                           "num_predict": 12, "top_k": 40,
                                                                           "top_p": 0.9, "min_p": 0.05,
                                                                           "repeat_penalty": 1.1})
            for _ in range(2))
    assert a.response == b.response  # the seed is used


def test_format_schema_is_enforced(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "country": {"type": "string", "maxLength": 20}},
              "required": ["city", "country"], "additionalProperties": False}
    reply = client.chat(model=NAME, messages=[{"role": "user", "content": "Describe Paris as JSON."}],
                        format=schema, options={"temperature": 0, "num_predict": 64})
    assert reply.done_reason == "stop", reply.message.content
    jsonschema.validate(json.loads(reply.message.content), schema)
    as_json = client.generate(model=NAME, prompt='Is the sky blue? Answer as JSON: {"answer": "yes" or "no"}',
                              format="json", options={"temperature": 0, "num_predict": 64})
    assert as_json.done_reason == "stop", as_json.response
    assert isinstance(json.loads(as_json.response), dict)


def test_generate_whole_and_streamed(client):
    whole = client.generate(model=NAME, prompt="Name a colour.", system="Answer in one word.", options=OPTS)
    assert whole.response.strip() and whole.done and whole.eval_count >= 1
    streamed = list(client.generate(model=NAME, prompt="Name a colour.", system="Answer in one word.",
                                    options=OPTS, stream=True))
    assert "".join(p.response for p in streamed) == whole.response and streamed[-1].done
    loaded = client.generate(model=NAME, prompt="")  # Ollama's way to load a model
    assert loaded.done and loaded.done_reason == "load"


def test_tools(client):
    """Ollama has no tool_choice (always "auto") and SmolLM2 answers this in words rather than calling;
    a reply is text or calls that fit the schema. The calls' shape: tests/unit/test_ollama_shapes.py."""
    tool = {"type": "function", "function": {
        "name": "get_weather", "description": "The weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
    messages = [{"role": "user", "content": "What is the weather in Paris? Use the tool."}]
    opts = {"temperature": 0, "num_predict": 64}
    whole = client.chat(model=NAME, messages=messages, tools=[tool], options=opts)
    parts = list(client.chat(model=NAME, messages=messages, tools=[tool], options=opts, stream=True))
    assert "".join(p.message.content for p in parts) == whole.message.content
    for reply in [whole] + parts:
        for call in reply.message.tool_calls or []:
            assert call.function.name == "get_weather" and isinstance(call.function.arguments["city"], str)
    # the call and its result go back as Ollama writes them (arguments an object, tool_name)
    follow = client.chat(model=NAME, options=OPTS, messages=messages + [
        {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "get_weather",
                                                                         "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": "Sunny, 21 C", "tool_name": "get_weather"}])
    assert follow.message.content.strip()


def test_errors_in_ollamas_shape(client, server):
    with pytest.raises(ollama.ResponseError) as e:
        client.pull(NAME)
    assert e.value.status_code == 501 and "/api/pull is not supported" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.delete(NAME)
    assert e.value.status_code == 501
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model=NAME, input="hello")  # no --embedding-model: the route says which flag serves one
    assert e.value.status_code == 404 and "no embedding model" in e.value.error and "--embedding-model" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="llama3:8b", messages=HI)
    assert e.value.status_code == 404 and "llama3:8b" in e.value.error and f"{NAME}:latest" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model=NAME, messages=[{"role": "user", "content": "What is this?", "images": ["aGVsbG8="]}])
    assert e.value.status_code == 400 and "messages[0].images" in e.value.error
    # without the key: 401, as on the OpenAI routes
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=server).list()
    assert e.value.status_code == 401


@pytest.mark.parametrize("body, names", [
    (b"{not json", "not valid JSON"),
    (b"[]", "JSON object"),
    ({"model": NAME, "messages": "hi"}, "messages"),
    ({"model": NAME, "messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role"),
    ({"model": NAME, "messages": HI, "options": {"temperature": -1}}, "options.temperature"),
    ({"model": NAME, "messages": HI, "options": {"repeat_penalty": 0}}, "options.repeat_penalty"),
    ({"model": NAME, "messages": HI, "options": {"num_predict": "many"}}, "options.num_predict"),
    ({"model": NAME, "messages": HI, "format": "yaml"}, "format"),
    ({"model": NAME, "messages": HI, "format": {"type": "object", "properties": {"a": {"$ref": "#/nowhere"}}}},
     "format"),
    ({"messages": HI}, "model"),
])
def test_bad_bodies_are_400_naming_the_field(server, body, names):
    kw = {"content": body} if isinstance(body, bytes) else {"json": body}
    r = httpx.post(server + "/api/chat", headers={"Authorization": f"Bearer {KEY}"}, timeout=30, **kw)
    assert r.status_code == 400, r.text
    assert list(r.json()) == ["error"] and names in r.json()["error"], r.text


def test_root_answers_head_and_keeps_the_chat_page(server):
    assert httpx.head(server + "/").status_code == 200
    page = httpx.get(server + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]


@pytest.fixture(scope="module")
def thinking_client():
    """SmolLM2 with a reasoning model's template (model_files.smollm2_thinking: the generation prompt
    opens <think>, enable_thinking=false writes an empty section)."""
    from support.model_files import smollm2_thinking

    proc, base, _ = start_server(SYSINFER_MODEL=smollm2_thinking(), SYSINFER_MODEL_NAME=NAME)
    yield ollama.Client(host=base)
    proc.terminate()
    proc.wait(timeout=30)


def test_think_and_message_thinking(thinking_client):
    opts = {"temperature": 0, "num_predict": 48}
    on = thinking_client.chat(model=NAME, messages=HI, think=True, options=opts)
    assert on.message.thinking and "<think>" not in on.message.content + on.message.thinking
    parts = list(thinking_client.chat(model=NAME, messages=HI, think=True, options=opts, stream=True))
    assert "".join(p.message.thinking or "" for p in parts) == on.message.thinking
    assert "".join(p.message.content for p in parts) == on.message.content
    off = thinking_client.chat(model=NAME, messages=HI, think=False, options=opts)
    assert not off.message.thinking and off.message.content.strip()
    generated = thinking_client.generate(model=NAME, prompt=HI[0]["content"], think=True, options=opts)
    assert generated.thinking == on.message.thinking
    # the thinking goes back in the history as Ollama sends it
    again = thinking_client.chat(model=NAME, options=opts, think=True, messages=HI + [
        {"role": "assistant", "content": on.message.content or "Paris.", "thinking": on.message.thinking},
        {"role": "user", "content": "And of Italy?"}])
    assert again.done


def test_langchain_chat_ollama(server):
    """LangChain's ChatOllama (langchain-ollama): invoke and stream alike, structured output by schema."""
    from langchain_ollama import ChatOllama
    from pydantic import BaseModel, Field

    llm = ChatOllama(model=NAME, base_url=server, temperature=0, num_predict=24,
                     client_kwargs={"headers": {"Authorization": f"Bearer {KEY}"}})
    whole = llm.invoke("What is the capital of France?")
    assert whole.content.strip() and whole.usage_metadata["output_tokens"] >= 1
    assert "".join(c.content for c in llm.stream("What is the capital of France?")) == whole.content

    class City(BaseModel):
        name: str = Field(max_length=20)
        country: str = Field(max_length=20)

    structured = ChatOllama(model=NAME, base_url=server, temperature=0, num_predict=64,
                            client_kwargs={"headers": {"Authorization": f"Bearer {KEY}"}})
    city = structured.with_structured_output(City, method="json_schema").invoke("Describe Paris.")
    assert isinstance(city, City) and city.name
