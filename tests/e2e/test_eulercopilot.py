"""EulerCopilot against a real server, configured with the `models.answer` values of the deployment
guide (read from docs/deployment.md, and the Chinese guide must give the same ones).

What EulerCopilot sends, as read in openEuler's euler-copilot-framework (0.9.5 and its current master):
- the answer model: `AsyncOpenAI(base_url=..., api_key=key)`; `chat.completions.create(model=name,
  messages=[system "You are a helpful assistant." unless one is given, ..., user], max_tokens=maxTokens,
  temperature=0.7, stream=True)`; it reads `chunk.choices[0]` of every chunk and takes a
  `reasoning_content` attribute on the delta as the start of a reasoning model's thinking. The newer
  provider adds `stream_options={"include_usage": True}` (and skips chunks without choices), goes
  through its own `httpx.AsyncClient(verify=False)`, and has a non-streaming form.
- the chart gives the framework the endpoint as the client's base_url (some versions append /v1
  first) and the RAG service the endpoint + "/v1".
- the function-call model with backend "vllm": the same client, non-streaming, with
  `extra_body={"guided_json": schema}` (enforced: tests/e2e/test_structured_api.py has the rest).
This test writes those requests itself (with the real `openai` client) rather than installing
EulerCopilot, which needs MongoDB, MinIO, Redis and an authentication service."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from support.servers import start_server

DOCS = Path(__file__).resolve().parents[2] / "docs"
SYSTEM = {"role": "system", "content": "You are a helpful assistant."}  # EulerCopilot's default system message


def helm_values(doc: str) -> dict:
    """The indented YAML block that starts with `models:` in a deployment guide."""
    text = (DOCS / doc).read_text(encoding="utf-8")
    block = re.search(r"^    models:\n(?:^    .*\n|^\n)+", text, re.M).group(0)
    return yaml.safe_load("\n".join(line[4:] for line in block.splitlines()))["models"]["answer"]


@pytest.fixture(scope="module")
def answer():
    values = helm_values("deployment.md")
    assert values == helm_values("deployment.zh.md")  # both languages give the same values
    assert set(values) == {"endpoint", "key", "name", "ctxLength", "maxTokens"}
    assert not values["endpoint"].rstrip("/").endswith("/v1")  # the chart's RAG service appends /v1 itself
    assert values["key"] and values["maxTokens"] < values["ctxLength"]
    return values


@pytest.fixture(scope="module")
def server(answer):
    proc, base, _ = start_server(SYSINFER_API_KEY=answer["key"], SYSINFER_MODEL_NAME=answer["name"],
                                 SYSINFER_CTX_SIZE=str(answer["ctxLength"]))
    yield base
    proc.terminate()
    proc.wait(timeout=30)


async def stream_answer(base_url: str, values: dict, question: str, max_tokens: int | None = None,
                        **extra) -> tuple[str, list]:
    """One answer as EulerCopilot's answer client asks for it (max_tokens: maxTokens unless a test cuts
    it, as SmolLM2 at temperature 0.7 sometimes runs on to the limit); returns the text and the chunks."""
    async with httpx.AsyncClient(verify=False) as http:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=values["key"], http_client=http, max_retries=0)
        stream = await client.chat.completions.create(
            model=values["name"], messages=[SYSTEM, {"role": "user", "content": question}],
            max_tokens=max_tokens or values["maxTokens"], temperature=0.7, stream=True, **extra)
        chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


@pytest.mark.parametrize("suffix", ["/v1", ""], ids=["endpoint+/v1", "endpoint-as-given"])
def test_answer_client_streams_plain_content(server, answer, suffix):
    """The 0.9.5 reader: choices[0] in every chunk, no reasoning_content on any delta (it would take
    the reply for a reasoning model's thinking), the text in content. Both base URLs the chart builds."""
    text, chunks = asyncio.run(stream_answer(server + suffix, answer, "What is 2 + 2? Answer with one number."))
    assert text.strip()
    assert all(len(c.choices) == 1 for c in chunks)
    assert not any(hasattr(c.choices[0].delta, "reasoning_content") for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    assert {c.model for c in chunks} == {answer["name"]}


def test_answer_client_with_usage_and_without_streaming(server, answer):
    """The newer provider: the usage chunk last (its token accounting), and the non-streaming form."""
    text, chunks = asyncio.run(stream_answer(server + "/v1", answer, "Say hello.", max_tokens=64,
                                             stream_options={"include_usage": True}))
    assert text.strip()
    assert chunks[-1].choices == [] and chunks[-1].usage.prompt_tokens > 5 and chunks[-1].usage.completion_tokens >= 1

    async def whole():
        async with httpx.AsyncClient(verify=False) as http:
            client = openai.AsyncOpenAI(base_url=server + "/v1", api_key=answer["key"], http_client=http, max_retries=0)
            return await client.chat.completions.create(
                model=answer["name"], messages=[SYSTEM, {"role": "user", "content": "Say hello."}],
                max_tokens=64, temperature=0.7, stream=False)

    r = asyncio.run(whole())
    assert r.choices[0].message.content.strip() and r.usage.completion_tokens >= 1
    assert not hasattr(r.choices[0].message, "reasoning_content")


def test_prompt_too_long_for_max_tokens_is_a_clear_400(server, answer):
    """ctxLength - maxTokens is the room for EulerCopilot's prompt: beyond it, the error it shows."""
    long_question = "word " * (answer["ctxLength"] - answer["maxTokens"] + 50)

    with pytest.raises(openai.BadRequestError) as info:
        asyncio.run(stream_answer(server + "/v1", answer, long_question))
    assert info.value.body["code"] == "context_length_exceeded"


def test_wrong_or_missing_key(server, answer):
    bad = dict(answer, key="not-the-key")
    with pytest.raises(openai.AuthenticationError):
        asyncio.run(stream_answer(server + "/v1", bad, "Hello", max_tokens=8))
    # an empty key: the openai client itself refuses (hence "any non-empty string" in the guide)
    env_free = subprocess.run([sys.executable, "-c", "import openai; openai.AsyncOpenAI(base_url='http://x/v1')"],
                              capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert env_free.returncode != 0 and "api_key" in env_free.stderr


def test_function_call_backend_vllm_gets_json_that_fits_the_schema(server, answer):
    """models.functionCall with backend "vllm": guided_json in extra_body is enforced by the grammar,
    so the reply parses as JSON and fits the schema (EulerCopilot has nothing to extract or repair)."""
    client = openai.OpenAI(base_url=server + "/v1", api_key=answer["key"], max_retries=0)
    schema = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
              "required": ["answer"], "additionalProperties": False}
    r = client.chat.completions.create(
        model=answer["name"], messages=[SYSTEM, {"role": "user", "content": "Is the sky blue? Answer in JSON."}],
        max_tokens=32, temperature=0.7, extra_body={"guided_json": schema})
    assert r.choices[0].finish_reason == "stop", r.choices[0]
    assert json.loads(r.choices[0].message.content) in ({"answer": "yes"}, {"answer": "no"})


def test_the_guides_check_script(server, answer, tmp_path):
    """The guide's Python check, run as written (port, key; max_tokens cut to keep CI short)."""
    script = re.search(r"```python\n(.*?)```", (DOCS / "deployment.md").read_text(encoding="utf-8"), re.S).group(1)
    assert script == re.search(r"```python\n(.*?)```", (DOCS / "deployment.zh.md").read_text(encoding="utf-8"),
                               re.S).group(1)
    assert 'base_url="http://127.0.0.1:7860/v1"' in script and 'api_key="KEY"' in script
    assert f'max_tokens={answer["maxTokens"]}' in script
    script = (script.replace("http://127.0.0.1:7860", server).replace('"KEY"', repr(answer["key"]))
              .replace(f'max_tokens={answer["maxTokens"]}', "max_tokens=48"))
    (tmp_path / "check.py").write_text(script, encoding="utf-8")
    out = subprocess.run([sys.executable, str(tmp_path / "check.py")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip(), out.stderr[-3000:]


# ---- a thinking model: EulerCopilot's request shapes replayed (issue 25) ----
#
# What EulerCopilot (euler-copilot-framework) sends a reasoning model, as the issue reads it:
# (The test adds a seed to the answer client's requests: SmolLM2 at temperature 0.7 sometimes opens a
# section of its own with thinking off, which is right but not what these tests are about.)
# - the answer client (apps/llm/reasoning.py): stream=True, stream_options.include_usage,
#   max_completion_tokens, temperature, and enable_thinking at the top level of the body (extra_body);
#   with thinking off it also appends "/no_think" to the last user message. It reads
#   delta.reasoning_content, falling back to <think>...</think> inside content.
# - the function-call client (apps/llm/function.py), one path per backend: guided_json (vllm),
#   response_format json_object (json_mode), json_schema with strict (structured_output), tools without
#   tool_choice reading tool_calls[0].function.arguments (function_call).
# - the shell's server check probes, in order: tools with tool_choice auto, json_schema strict,
#   json_object, guided_json.
# The model: the real SmolLM2 with its chat template replaced by a reasoning one (the generation
# prompt opens <think>; enable_thinking=false writes an empty section), served with a thinking
# budget so the section always closes and an answer follows.

THINK_BUDGET = 12
SCHEMA = {"type": "object", "properties": {"answer": {"type": "string", "enum": ["yes", "no"]}},
          "required": ["answer"], "additionalProperties": False}
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather in a city.",
                                            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                           "required": ["city"]}}}


@pytest.fixture(scope="module")
def thinking(answer):
    from support.model_files import smollm2_thinking

    proc, base, _ = start_server(SYSINFER_MODEL=smollm2_thinking(), SYSINFER_API_KEY=answer["key"],
                                 SYSINFER_MODEL_NAME=answer["name"], SYSINFER_REASONING_BUDGET=str(THINK_BUDGET))
    yield base + "/v1"
    proc.terminate()
    proc.wait(timeout=30)


def euler_reads(chunks) -> tuple[str, str]:
    """(reasoning, answer) as EulerCopilot's answer client reads a stream: reasoning_content deltas,
    else a <think> block at the start of content."""
    reasoning = "".join(getattr(c.choices[0].delta, "reasoning_content", None) or "" for c in chunks if c.choices)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    if not reasoning and "</think>" in content:
        reasoning, content = content.split("</think>", 1)
        reasoning = reasoning.replace("<think>", "")
    return reasoning, content


async def euler_answer(base_url: str, values: dict, question: str, thinking_on: bool, stream: bool = True):
    """One call of the answer client: thinking on, or off (enable_thinking false and /no_think)."""
    async with httpx.AsyncClient(verify=False) as http:
        client = openai.AsyncOpenAI(base_url=base_url, api_key=values["key"], http_client=http, max_retries=0)
        user = question if thinking_on else question + "/no_think"
        kw = {"stream_options": {"include_usage": True}} if stream else {}
        reply = await client.chat.completions.create(
            model=values["name"], messages=[SYSTEM, {"role": "user", "content": user}], max_completion_tokens=64,
            temperature=0.7, stream=stream, extra_body={"enable_thinking": thinking_on, "seed": 7}, **kw)
        return [c async for c in reply] if stream else reply


@pytest.mark.parametrize("thinking_on", [True, False], ids=["thinking", "no_think"])
def test_answer_client_reads_reasoning_apart_from_the_answer(thinking, answer, thinking_on):
    chunks = asyncio.run(euler_answer(thinking, answer, "What is the capital of France?", thinking_on))
    reasoning, content = euler_reads(chunks)
    deltas_with_reasoning = [c for c in chunks if c.choices and getattr(c.choices[0].delta, "reasoning_content", None)]
    usage = chunks[-1].usage
    assert "<think>" not in content and "</think>" not in content  # never the tags, whatever the side
    if thinking_on:
        assert deltas_with_reasoning and reasoning.strip()  # read from reasoning_content, not from content
        assert 0 < usage.completion_tokens_details.reasoning_tokens <= usage.completion_tokens
        # the section closes at the server's budget (the tags' own tokens beyond it)
        assert usage.completion_tokens_details.reasoning_tokens <= THINK_BUDGET + 8
    else:  # an empty section in the prompt: the reply is all answer, no reasoning_content at all
        assert not deltas_with_reasoning and content.strip()
        assert usage.completion_tokens_details.reasoning_tokens == 0


@pytest.mark.parametrize("thinking_on", [True, False], ids=["thinking", "no_think"])
def test_answer_client_non_streaming(thinking, answer, thinking_on):
    r = asyncio.run(euler_answer(thinking, answer, "Say hello.", thinking_on, stream=False))
    message = r.choices[0].message
    assert "<think>" not in (message.content or "") and "</think>" not in (message.content or "")
    assert bool(getattr(message, "reasoning_content", None)) is thinking_on
    assert (r.usage.completion_tokens_details.reasoning_tokens > 0) is thinking_on


def test_history_with_reasoning_content_and_the_per_request_budget(thinking, answer):
    """An assistant turn that carries its reasoning_content comes back in the history (accepted, the
    template decides what to write); thinking_budget (Qwen's name) closes the section sooner."""
    client = openai.OpenAI(base_url=thinking, api_key=answer["key"], max_retries=0)
    first = client.chat.completions.create(model=answer["name"], messages=[{"role": "user", "content": "Hi."}],
                                           max_tokens=40, temperature=0)
    history = [{"role": "user", "content": "Hi."},
               {"role": "assistant", "content": first.choices[0].message.content or "Hello.",
                "reasoning_content": first.choices[0].message.reasoning_content},
               {"role": "user", "content": "And again?"}]
    r = client.chat.completions.create(model=answer["name"], messages=history, max_tokens=40, temperature=0,
                                       extra_body={"thinking_budget": 3})
    assert 0 < r.usage.completion_tokens_details.reasoning_tokens <= 3 + 8
    r = client.chat.completions.create(model=answer["name"], messages=history, max_tokens=40, temperature=0,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert r.usage.completion_tokens_details.reasoning_tokens == 0 and r.choices[0].message.content


def function_call(client, values: dict, backend: str, question: str = "Is the sky blue? Answer in JSON."):
    """The function-call client's request for one backend (non-streaming, thinking on)."""
    kw: dict = {"model": values["name"], "messages": [SYSTEM, {"role": "user", "content": question}],
                "max_tokens": 96, "temperature": 0.7, "seed": 7}  # seeded: json_object bounds no key count
    if backend == "vllm":
        kw["extra_body"] = {"guided_json": SCHEMA}
    elif backend == "json_mode":
        kw["response_format"] = {"type": "json_object"}
    elif backend == "structured_output":
        kw["response_format"] = {"type": "json_schema", "json_schema": {"name": "answer", "schema": SCHEMA, "strict": True}}
    elif backend == "function_call":
        kw.update(tools=[WEATHER], messages=[SYSTEM, {"role": "user", "content": "What is the weather in Paris?"}])
    elif backend == "tools_auto":
        kw.update(tools=[WEATHER], tool_choice="auto",
                  messages=[SYSTEM, {"role": "user", "content": "What is the weather in Paris?"}])
    return client.chat.completions.create(**kw)


def check_function_reply(backend: str, r) -> None:
    choice = r.choices[0]
    message = choice.message
    assert getattr(message, "reasoning_content", None)  # the model thought first, apart from the answer
    assert r.usage.completion_tokens_details.reasoning_tokens > 0
    if backend in ("function_call", "tools_auto"):
        if message.tool_calls:  # what EulerCopilot reads: tool_calls[0].function.arguments
            args = json.loads(message.tool_calls[0].function.arguments)
            assert message.tool_calls[0].function.name == "get_weather" and isinstance(args["city"], str)
            assert choice.finish_reason == "tool_calls"
        assert "<tool_call>" not in (message.content or "") and "<think>" not in (message.content or "")
        return
    assert choice.finish_reason == "stop", choice
    document = json.loads(message.content)  # the answer alone: no tags, no reasoning before the JSON
    if backend == "json_mode":
        assert isinstance(document, dict)
    else:
        assert document in ({"answer": "yes"}, {"answer": "no"})


def test_function_call_backend_function_call_after_thinking(thinking, answer):
    """The function_call backend (tools without tool_choice); the other backends' requests are the
    shell's probes (next test), the same requests and checks: not sent twice."""
    client = openai.OpenAI(base_url=thinking, api_key=answer["key"], max_retries=0)
    check_function_reply("function_call", function_call(client, answer, "function_call"))


def test_the_shells_probe_order(thinking, answer):
    """The deployment shell's server check, in its order, against the thinking model; its probes are
    the vllm, structured_output and json_mode backends' requests too."""
    client = openai.OpenAI(base_url=thinking, api_key=answer["key"], max_retries=0)
    for backend in ("tools_auto", "structured_output", "json_mode", "vllm"):
        check_function_reply(backend, function_call(client, answer, backend))


def test_a_required_call_follows_the_thinking_as_tool_calls(thinking, answer):
    """Calls written after </think> are parsed into tool_calls (never left as text), whole and streamed."""
    client = openai.OpenAI(base_url=thinking, api_key=answer["key"], max_retries=0)
    kw = {"model": answer["name"], "messages": [{"role": "user", "content": "What is the weather in Paris?"}],
          "tools": [WEATHER], "tool_choice": "required", "max_tokens": 96, "temperature": 0}
    r = client.chat.completions.create(**kw)
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.reasoning_content
    assert json.loads(r.choices[0].message.tool_calls[0].function.arguments)["city"]
    chunks = list(client.chat.completions.create(stream=True, **kw))
    calls = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls for tc in c.choices[0].delta.tool_calls]
    assert [(c.function.name, c.function.arguments) for c in calls] == \
        [(c.function.name, c.function.arguments) for c in r.choices[0].message.tool_calls]
    assert euler_reads(chunks)[0] == r.choices[0].message.reasoning_content


# ---- the function-call client with backend "ollama" (issue 27): Ollama's /api/chat replayed ----
#
# What euler-copilot-framework sends with `functionCall.backend: ollama` (read in its source):
# - FunctionLLM._call_ollama (apps/llm/function.py, 0.9.x and master): `ollama.AsyncClient(host=endpoint,
#   headers={"Authorization": "Bearer KEY"})`, then `chat(model, messages=[system: the JSON-generation
#   prompt with the schema, user: "please generate a JSON response ..."], options={temperature,
#   num_predict: max_tokens} (0.9.x also num_ctx: max_tokens), format=schema)`, not streamed; it keeps
#   what follows the last `</think>` of message.content and parses it as JSON (fenced or bracketed
#   JSON as fallbacks). (Master's version also passes extra_body, which the ollama client refuses
#   before anything is sent; the request is replayed as the client can send it.)
# - the newer provider (apps/llm/providers/ollama.py): `chat(model, messages, options={temperature,
#   num_predict}, stream=True, tools=[{"type": "function", "function": {name, description, parameters}}])`;
#   it reads message.thinking, message.content and message.tool_calls (name -> arguments, an object)
#   of every chunk, and prompt_eval_count / eval_count of the last (done) one as its token usage.

JSON_PROMPT = ("You are a helpful assistant. Answer the question with a JSON object that fits this JSON "
               "schema:\n" + json.dumps(SCHEMA) + "\nQuestion: Is the sky blue?")


def euler_json(content: str) -> dict:
    """EulerCopilot's process_response, its first path: the text after the last </think>, parsed."""
    return json.loads(content.split("</think>")[-1].strip())


async def ollama_function_call(host: str, values: dict) -> "ollama.ChatResponse":
    import ollama

    client = ollama.AsyncClient(host=host, headers={"Authorization": f"Bearer {values['key']}"})
    return await client.chat(
        model=values["name"], options={"temperature": 0.7, "num_ctx": 96, "num_predict": 96, "seed": 7},
        format=SCHEMA, messages=[{"role": "system", "content": JSON_PROMPT},
                                 {"role": "user", "content": "please generate a JSON response based on the above "
                                                             "information and schema."}])


@pytest.mark.parametrize("model", ["plain", "thinking"])
def test_function_call_backend_ollama_gets_json_that_fits_the_schema(request, answer, model):
    """`format` (a JSON schema) is enforced by the grammar after any thinking: content is the JSON alone."""
    host = request.getfixturevalue("server" if model == "plain" else "thinking").removesuffix("/v1")
    r = asyncio.run(ollama_function_call(host, answer))
    assert r.done and r.done_reason == "stop", r
    assert euler_json(r.message.content) in ({"answer": "yes"}, {"answer": "no"})
    assert "<think>" not in r.message.content and bool(r.message.thinking) is (model == "thinking")
    assert r.prompt_eval_count > 10 and 0 < r.eval_count <= 96


def test_ollama_provider_streams_tools_and_usage(thinking, answer):
    """The newer provider's streamed chat with tools, against the thinking model: thinking apart,
    calls as objects that fit the schema, usage in the last chunk."""
    import ollama

    async def provider_chat():
        client = ollama.AsyncClient(host=thinking.removesuffix("/v1"), verify=False,
                                    headers={"Authorization": f"Bearer {answer['key']}"})
        stream = await client.chat(model=answer["name"], options={"temperature": 0.7, "num_predict": 96, "seed": 7},
                                   stream=True, tools=[WEATHER],
                                   messages=[SYSTEM, {"role": "user", "content": "What is the weather in Paris?"}])
        return [chunk async for chunk in stream]

    chunks = asyncio.run(provider_chat())
    thinking_text = "".join(c.message.thinking or "" for c in chunks)
    content = "".join(c.message.content or "" for c in chunks)
    calls = {tc.function.name: tc.function.arguments for c in chunks for tc in c.message.tool_calls or []}
    assert thinking_text.strip() and "<think>" not in content + thinking_text and "<tool_call>" not in content
    assert all(name == "get_weather" and isinstance(args["city"], str) for name, args in calls.items())
    assert calls or content.strip()  # Ollama has no tool_choice: a call, or an answer in words
    assert chunks[-1].done and chunks[-1].prompt_eval_count > 10 and chunks[-1].eval_count > 0
    assert all(not c.done for c in chunks[:-1])
