"""Structured output and tools through the real server (SmolLM2) with the real `openai` client:
every constrained reply validates against its schema, tool calls stream and reassemble, refusals are
400s naming the field, hostile schemas are refused quickly."""

from __future__ import annotations

import concurrent.futures
import json
import re
import time

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from support.servers import start_server


@pytest.fixture(scope="module")
def server():
    proc, base, _ = start_server(SYSINFER_MAX_BATCH="8")
    yield base
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="none", max_retries=0)


def chat(client, content, **kw):
    kw.setdefault("max_tokens", 200)
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": content}], **kw)


SCHEMAS = {
    "nested": ({"type": "object", "properties": {
        "name": {"type": "string", "maxLength": 30},
        "address": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                                     "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
                    "required": ["city", "zip"], "additionalProperties": False}},
        "required": ["name", "address"], "additionalProperties": False}, "Give a person's name and address as JSON."),
    "array_enum": ({"type": "object", "properties": {
        "colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "minItems": 1, "maxItems": 3},
        "mood": {"type": "string", "enum": ["happy", "sad"]}},
        "required": ["colors", "mood"], "additionalProperties": False}, "List some favourite colors and a mood."),
    "bounded_numbers": ({"type": "object", "properties": {
        "age": {"type": "integer", "minimum": 18, "maximum": 99},
        "score": {"type": "number", "exclusiveMinimum": 0, "maximum": 10}},
        "required": ["age", "score"], "additionalProperties": False}, "Rate a movie and give the reviewer's age."),
    "any_of": ({"type": "object", "properties": {
        "answer": {"anyOf": [{"type": "integer", "minimum": 0, "maximum": 1000},
                             {"type": "string", "enum": ["unknown"]}]}},
        "required": ["answer"], "additionalProperties": False}, "How many legs does a spider have?"),
    "pattern": ({"type": "object", "properties": {
        "date": {"type": "string", "pattern": "^20[0-9]{2}-[01][0-9]-[0-3][0-9]$"},
        "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}},
        "required": ["date", "code"], "additionalProperties": False}, "Give a date and a product code."),
}


@pytest.mark.parametrize("name", sorted(SCHEMAS))
def test_json_schema_output_validates(client, name):
    schema, question = SCHEMAS[name]
    for kw in ({"temperature": 0}, {"temperature": 0.9, "seed": 7}):
        r = chat(client, question, response_format={"type": "json_schema", "json_schema": {
            "name": name, "schema": schema, "strict": True}}, **kw)
        assert r.choices[0].finish_reason == "stop", r.choices[0].message.content
        jsonschema.validate(json.loads(r.choices[0].message.content), schema)


def test_json_schema_streamed_equals_whole(client):
    schema, question = SCHEMAS["nested"]
    rf = {"type": "json_schema", "json_schema": {"name": "p", "schema": schema}}
    whole = chat(client, question, response_format=rf, temperature=0).choices[0].message.content
    chunks = list(chat(client, question, response_format=rf, temperature=0, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_json_object(client):
    # SmolLM2-135M tends to add keys until max_tokens here: a cut reply is still the start of one object
    r = chat(client, "Give a cat's name and age as a JSON object.", response_format={"type": "json_object"},
             temperature=0, max_tokens=60)
    text = r.choices[0].message.content
    assert text.startswith("{")
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert r.choices[0].finish_reason == "length" and text.count("{") >= 1


def test_guided_fields_in_extra_body(client):
    r = chat(client, "Is the sky blue? Answer yes or no.", extra_body={"guided_choice": ["yes", "no", "maybe"]},
             temperature=0.7, seed=3)
    assert r.choices[0].message.content in ("yes", "no", "maybe") and r.choices[0].finish_reason == "stop"
    r = chat(client, "Give me a phone number.", extra_body={"guided_regex": r"\+1-[0-9]{3}-[0-9]{4}"}, temperature=0)
    assert re.fullmatch(r"\+1-[0-9]{3}-[0-9]{4}", r.choices[0].message.content)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}
    r = chat(client, "Pick a number between 1 and 10.", extra_body={"guided_json": schema}, temperature=0)
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    r = chat(client, "Say a greeting.", extra_body={"guided_grammar": 'start: "hello " NAME\nNAME: /[a-z]{1,10}/'},
             temperature=0)
    assert re.fullmatch(r"hello [a-z]{1,10}", r.choices[0].message.content)


def test_completions_endpoint_takes_guided_regex(client):
    r = client.completions.create(model="m", prompt="The year the war ended was", max_tokens=10, temperature=0,
                                  extra_body={"guided_regex": "19[0-9]{2}"})
    assert re.fullmatch("19[0-9]{2}", r.choices[0].text) and r.choices[0].finish_reason == "stop"


def test_max_tokens_cut_is_length(client):
    r = chat(client, "Write a long story as JSON.", extra_body={"guided_json": {"type": "object", "properties": {
        "story": {"type": "string"}}, "required": ["story"]}}, max_tokens=8, temperature=0)
    assert r.choices[0].finish_reason == "length"


class Person(BaseModel):
    name: str = Field(max_length=30)
    age: int = Field(ge=0, le=120)
    hobbies: list[str] = Field(max_length=3)


def test_parse_with_pydantic_model(client):
    r = client.chat.completions.parse(model="m", messages=[{"role": "user", "content": "Invent a person with a name, an age and up to three hobbies."}],
                                      response_format=Person, max_tokens=200, temperature=0)
    assert isinstance(r.choices[0].message.parsed, Person)


def test_same_seed_same_output(client):
    schema, question = SCHEMAS["array_enum"]
    kw = {"response_format": {"type": "json_schema", "json_schema": {"name": "c", "schema": schema}},
          "temperature": 1.0, "seed": 42}
    assert chat(client, question, **kw).choices[0].message.content == chat(client, question, **kw).choices[0].message.content


def test_eight_concurrent_constrained_requests_match_alone(client):
    questions = [(name, SCHEMAS[name]) for name in sorted(SCHEMAS)] + [("nested", SCHEMAS["nested"])] * 3

    def ask(item):
        name, (schema, question) = item
        return chat(client, question, response_format={"type": "json_schema", "json_schema": {
            "name": name, "schema": schema}}, temperature=0).choices[0].message.content

    alone = [ask(q) for q in questions[:5]]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, questions))
    assert together[:5] == alone and together[5:] == [alone[sorted(SCHEMAS).index("nested")]] * 3


# ---- refusals ----

def post(server, body):
    return httpx.post(server + "/v1/chat/completions", json={"model": "m", "max_tokens": 5,
                                                             "messages": [{"role": "user", "content": "hi"}], **body},
                      timeout=30)


@pytest.mark.parametrize("schema, named", [
    ({"not": {"type": "string"}}, "not"),
    ({"type": "object", "dependentSchemas": {"a": {}}}, "dependentSchemas"),
    ({"type": "string", "format": "credit-card"}, "credit-card"),
    ({"type": "string", "pattern": "(?=a)b"}, "look-around"),
])
def test_unsupported_schema_feature_is_a_400_naming_it(server, schema, named):
    r = post(server, {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert named in err["message"] and err["param"].startswith("response_format") and err["code"]


@pytest.mark.parametrize("body, param", [
    ({"response_format": {"type": "xml"}}, "response_format.type"),
    ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
    ({"guided_choice": []}, "guided_choice"),
    ({"guided_regex": "(unclosed"}, "guided_regex"),
    ({"guided_grammar": "start: @@@"}, "guided_grammar"),
    ({"guided_regex": "a", "guided_choice": ["a"]}, "guided_choice"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": {"type": "function",
                                                                                  "function": {"name": "g"}}}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
])
def test_bad_constraints_are_400s(server, body, param):
    r = post(server, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param


def test_hostile_schemas_are_refused_quickly(server):
    deep: dict = {"type": "string"}
    for _ in range(300):
        deep = {"type": "object", "properties": {"a": deep}}
    huge = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(20000)}}
    many_enum = {"enum": [f"value-{i}" for i in range(50000)]}
    for schema in (deep, huge, many_enum):
        start = time.perf_counter()
        r = post(server, {"guided_json": schema})
        assert r.status_code == 400 and r.json()["error"]["code"] == "schema_too_large", r.text[:300]
        assert time.perf_counter() - start < 5


# ---- tools ----

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                   "required": ["city", "unit"], "additionalProperties": False}}}
ADD = {"type": "function", "function": {
    "name": "add", "description": "Add two numbers",
    "parameters": {"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
                   "required": ["a", "b"], "additionalProperties": False}}}
SCHEMA_OF = {t["function"]["name"]: t["function"]["parameters"] for t in (WEATHER, ADD)}
QUESTION = "What is the weather in Paris right now?"


def check_calls(calls):
    assert calls
    for c in calls:
        assert c.id.startswith("call_") and c.type == "function"
        jsonschema.validate(json.loads(c.function.arguments), SCHEMA_OF[c.function.name])


def test_required_tool_call(client):
    r = chat(client, QUESTION, tools=[WEATHER, ADD], tool_choice="required", parallel_tool_calls=False, temperature=0)
    assert r.choices[0].finish_reason == "tool_calls"
    check_calls(r.choices[0].message.tool_calls)



def test_parallel_calls_end_where_the_model_repeats_one(client):
    """Parallel calls allowed: SmolLM2-135M repeats its get_weather call on and on. The reply ends at
    the first repeat, whole and streamed: finish "tool_calls", the distinct calls, no content, and
    far fewer tokens than max_tokens (it ran to max_tokens and said "length" before)."""
    kw = {"tools": [WEATHER], "tool_choice": "required", "parallel_tool_calls": True, "temperature": 0,
          "max_tokens": 300}
    r = chat(client, QUESTION, **kw)
    calls = r.choices[0].message.tool_calls
    assert r.choices[0].finish_reason == "tool_calls" and r.choices[0].message.content is None
    check_calls(calls)
    keys = [(c.function.name, json.loads(c.function.arguments)) for c in calls]
    assert all(keys.count(k) == 1 for k in keys)
    assert r.usage.completion_tokens < 40 * (len(calls) + 1)  # each call (tags and all) is about 35 tokens
    chunks = list(chat(client, QUESTION, stream=True, **kw))
    streamed = [(tc.function.name, json.loads(tc.function.arguments)) for c in chunks if c.choices
                for tc in c.choices[0].delta.tool_calls or []]
    assert streamed == keys and chunks[-1].choices[0].finish_reason == "tool_calls"


def test_named_tool_call_and_no_parallel(client):
    r = chat(client, QUESTION, tools=[WEATHER, ADD], tool_choice={"type": "function", "function": {"name": "add"}},
             temperature=0.8, seed=5)
    calls = r.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["add"] and r.choices[0].finish_reason == "tool_calls"
    check_calls(calls)
    r = chat(client, QUESTION, tools=[WEATHER, ADD], tool_choice="required", parallel_tool_calls=False, temperature=0)
    assert len(r.choices[0].message.tool_calls) == 1


def test_streamed_tool_calls_reassemble_to_the_whole_ones(client):
    kw = {"tools": [WEATHER, ADD], "tool_choice": "required", "temperature": 0, "parallel_tool_calls": False}
    whole = chat(client, QUESTION, **kw).choices[0]
    chunks = list(chat(client, QUESTION, stream=True, **kw))
    firsts = [tc for c in chunks if c.choices and c.choices[0].delta.tool_calls for tc in c.choices[0].delta.tool_calls
              if tc.id]
    assert all(tc.type == "function" and tc.function.name and tc.index is not None for tc in firsts)
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # the client's own stream helper reassembles them
    with client.chat.completions.stream(model="m", messages=[{"role": "user", "content": QUESTION}],
                                        max_tokens=200, **kw) as stream:
        final = stream.get_final_completion().choices[0]
    got = [(c.function.name, c.function.arguments) for c in final.message.tool_calls]
    assert got == [(c.function.name, c.function.arguments) for c in whole.message.tool_calls]
    assert final.finish_reason == "tool_calls"
    check_calls(final.message.tool_calls)


def test_tool_choice_none_and_auto_reply_normally(client):
    r = chat(client, "Say hello.", tools=[WEATHER], tool_choice="none", temperature=0, max_tokens=20)
    assert r.choices[0].message.tool_calls is None and r.choices[0].message.content
    r = chat(client, QUESTION, tools=[WEATHER, ADD], temperature=0)  # auto: text, or calls that validate
    msg = r.choices[0].message
    if msg.tool_calls:
        check_calls(msg.tool_calls)
        assert r.choices[0].finish_reason == "tool_calls"
    else:
        assert msg.content and "<tool_call>" not in msg.content


def test_tool_result_round_trip(client):
    first = chat(client, QUESTION, tools=[WEATHER], tool_choice="required", temperature=0).choices[0].message
    call = first.tool_calls[0]
    messages = [{"role": "user", "content": QUESTION},
                {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"temperature": 21, "sky": "sunny"})}]
    r = client.chat.completions.create(model="m", messages=messages, tools=[WEATHER], max_tokens=40, temperature=0)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert r.choices[0].message.content or r.choices[0].message.tool_calls


def test_eulercopilot_probe_order(client):
    """EulerCopilot's function-call backend tries tools, then json_schema, json_object, guided_json:
    the first already succeeds, and so does each of the others."""
    r = chat(client, QUESTION, tools=[WEATHER], tool_choice={"type": "function", "function": {"name": "get_weather"}},
             temperature=0)
    check_calls(r.choices[0].message.tool_calls)
    schema = WEATHER["function"]["parameters"]
    for kw in ({"response_format": {"type": "json_schema", "json_schema": {"name": "w", "schema": schema}}},
               {"response_format": {"type": "json_object"}, "max_tokens": 30}, {"extra_body": {"guided_json": schema}}):
        r = chat(client, QUESTION, temperature=0, **kw)
        assert r.choices[0].message.content.startswith("{")
        if r.choices[0].finish_reason == "stop" and "json_object" not in json.dumps(kw):
            jsonschema.validate(json.loads(r.choices[0].message.content), schema)


# ---- with the rest of the surface: n choices and logprobs under a grammar ----

def test_n_constrained_choices_each_follow_the_grammar(client):
    options = ["red", "green", "blue", "yellow"]
    r = chat(client, "Pick a color.", n=4, temperature=1.0, seed=3, extra_body={"guided_choice": options})
    assert sorted(c.index for c in r.choices) == [0, 1, 2, 3]
    assert all(c.message.content in options and c.finish_reason == "stop" for c in r.choices), r.choices
    streamed: dict[int, str] = {}
    for chunk in chat(client, "Pick a color.", n=4, temperature=1.0, seed=3, stream=True,
                      extra_body={"guided_choice": options}):
        for c in chunk.choices:
            streamed[c.index] = streamed.get(c.index, "") + (c.delta.content or "")
    assert streamed == {c.index: c.message.content for c in r.choices}  # same seeds, same choices


def test_logprobs_come_from_the_masked_distribution(client):
    """Under guided_choice the top entries can only be tokens the grammar allowed there (a masked
    token has no logprob, so fewer than top_logprobs may come back), and none is -inf."""
    options = ["yes", "no"]
    r = chat(client, "Is water wet?", temperature=0, logprobs=True, top_logprobs=20,
             extra_body={"guided_choice": options})
    content = r.choices[0].message.content
    entries = r.choices[0].logprobs.content
    assert content in options and b"".join(bytes(e.bytes) for e in entries).decode() == content
    first = entries[0]
    assert 1 <= len(first.top_logprobs) < 20
    assert all(-1e9 < t.logprob <= 0 and any(o.startswith(t.token) for o in options) for t in first.top_logprobs)
    assert first.top_logprobs[0].token == first.token  # greedy: the sampled token is the best allowed one
    assert abs(sum(2.718281828459045 ** t.logprob for t in first.top_logprobs) - 1) < 1e-3  # all the mass


def test_n_streamed_tool_calls_with_logprobs(client):
    kw = {"tools": [WEATHER, ADD], "tool_choice": "required", "parallel_tool_calls": False,
          "temperature": 0.8, "seed": 11, "n": 2, "logprobs": True}
    whole = chat(client, QUESTION, **kw)
    calls: dict[int, dict[int, list[str]]] = {0: {}, 1: {}}
    finish, logprob_entries = {}, {0: 0, 1: 0}
    for chunk in chat(client, QUESTION, stream=True, **kw):
        for c in chunk.choices:
            for tc in c.delta.tool_calls or []:
                call = calls[c.index].setdefault(tc.index, ["", ""])
                call[0] += tc.function.name or ""
                call[1] += tc.function.arguments or ""
            if c.logprobs and c.logprobs.content:
                logprob_entries[c.index] += len(c.logprobs.content)
            if c.finish_reason:
                finish[c.index] = c.finish_reason
    assert finish == {0: "tool_calls", 1: "tool_calls"}
    for choice in whole.choices:
        assert choice.finish_reason == "tool_calls"
        check_calls(choice.message.tool_calls)
        assert [tuple(v) for _, v in sorted(calls[choice.index].items())] == [
            (c.function.name, c.function.arguments) for c in choice.message.tool_calls]
        assert len(choice.logprobs.content) == logprob_entries[choice.index] > 0


# ---- the examples in README.md and docs/api.md do what they say ----

DOCS_ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_readme_tools_example_makes_the_one_call_it_promises(client):
    """README's tools example as written (tool_choice "required", no max_tokens, no
    parallel_tool_calls): one call with the arguments its comment shows (it once made 112 calls until
    the length limit, the last with arguments "")."""
    readme = (DOCS_ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"^(      tools = \[.*?)\n\n", readme, re.S | re.M).group(1)
    code = "\n".join(line[6:] for line in block.splitlines())
    promised = re.search(r"# (\'.*\')", code).group(1)
    scope = {"client": client, "msgs": [{"role": "user", "content": "What is the weather in Paris?"}]}
    exec(code, scope)  # noqa: S102 - our own README
    r = scope["r"]
    assert r.choices[0].finish_reason == "tool_calls"
    assert [c.function.arguments for c in r.choices[0].message.tool_calls] == [eval(promised)]  # noqa: S307


def test_api_doc_python_example(server):
    """docs/api.md's Python example as written: a parsed Person, a guided choice, one weather call."""
    doc = (DOCS_ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(.*?)```", doc, re.S).group(1).replace("http://127.0.0.1:7860", server)
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - our own docs
    assert scope["person"].name and isinstance(scope["person"].age, int)
    assert scope["answer"] in ("yes", "no")
    assert scope["call"].function.name == "get_weather" and json.loads(scope["call"].function.arguments)["city"]
    assert scope["reply"].choices[0].finish_reason == "tool_calls" and len(scope["reply"].choices[0].message.tool_calls) == 1


def test_a_call_cut_by_max_tokens_is_left_out(client):
    """max_tokens inside a call: no call whose arguments don't parse, whole or streamed; the finish says
    "length"; the openai stream helper and LangChain read it without error."""
    kw = {"tools": [WEATHER], "tool_choice": "required", "temperature": 0, "max_tokens": 12}
    r = chat(client, QUESTION, **kw)
    assert r.choices[0].finish_reason == "length" and not r.choices[0].message.tool_calls
    chunks = list(chat(client, QUESTION, stream=True, **kw))
    assert not any(c.choices and c.choices[0].delta.tool_calls for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "length"
    # the client's stream helper: its own rule for any cut reply (never a JSON error on a partial call)
    with pytest.raises(openai.LengthFinishReasonError) as info:
        with client.chat.completions.stream(model="m", messages=[{"role": "user", "content": QUESTION}], **kw) as s:
            s.get_final_completion()
    assert not info.value.completion.choices[0].message.tool_calls
    langchain_openai = pytest.importorskip("langchain_openai")
    llm = langchain_openai.ChatOpenAI(base_url=str(client.base_url), api_key="none", model="m", temperature=0,
                                      max_tokens=12, max_retries=0)
    for message in (llm.bind_tools([WEATHER], tool_choice="required").invoke(QUESTION),):
        assert message.tool_calls == [] and message.response_metadata["finish_reason"] == "length"
    merged = None
    for chunk in llm.bind_tools([WEATHER], tool_choice="required").stream(QUESTION):
        merged = chunk if merged is None else merged + chunk
    assert merged.tool_calls == [] and not merged.invalid_tool_calls
