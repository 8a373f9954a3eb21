"""Hypothesis strategies for hostile request bodies, and the check every answer must pass.

Used by tests/e2e/test_api_fuzz.py (a bounded run in CI) and scripts/fuzz_http.py (long runs). Bodies mix
plausible values with garbage in every field: wrong types, NaN/Infinity, integers past 2^63, deep
nesting, lone surrogates, NUL characters, typed special tokens, many stop strings, logit_bias junk.
Two classes of their own (issue 29): output constraints (`constrained_bodies`: nested repeats in
regexes and patterns, self- and mutually recursive `$ref`s, refs that point nowhere, tool parameters
with `$defs`, recursive Lark rules), and queue admission (`n` past the fuzz server's --max-queue
of FUZZ_MAX_QUEUE: a 400 naming `n`, never a 429 from an idle server). Ollama's own bodies (issue 27)
for /api/chat and /api/generate, answered in Ollama's error shape.
"""

from __future__ import annotations

import json

import httpx
from hypothesis import strategies as st

SPECIAL_TEXT = ["<|im_start|>", "<|im_end|>", "<|endoftext|>", "<|begin_of_text|>", "<reserved_106>", "</s>"]

texts = st.one_of(
    st.text(max_size=60),
    st.sampled_from(SPECIAL_TEXT),
    st.text(alphabet=st.sampled_from(["\x00", "\ud800", "\udfff", "é", "中", "\n", "a"]), max_size=20),
)
numbers = st.one_of(
    st.integers(-2**70, 2**70), st.integers(-5, 5),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-3, 3),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | texts,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(texts, inner, max_size=4),
    max_leaves=12,
)


FUZZ_MAX_QUEUE = 4  # the fuzz servers' --max-queue: `n` past it can never be served


def _fields(hostile: bool) -> tuple[dict, st.SearchStrategy, st.SearchStrategy]:
    """(optional common fields, messages, prompt) strategies; hostile ones put garbage in any field."""
    def field(plausible: st.SearchStrategy) -> st.SearchStrategy:
        return st.one_of(plausible, plausible, json_values) if hostile else plausible

    common = {
        "model": field(st.text(max_size=10)),
        "max_tokens": field(st.integers(-1, 4)),
        "temperature": field(st.floats(0, 2) if not hostile else st.floats(-1, 3)),
        "top_p": field(st.floats(0.01, 1) if not hostile else st.floats(-0.5, 1.5)),
        "top_k": field(st.integers(0, 50)),
        "min_p": field(st.floats(0, 1)),
        "frequency_penalty": field(st.floats(-2, 2)),
        "presence_penalty": field(st.floats(-2, 2)),
        "repetition_penalty": field(st.floats(0.01, 10)),
        "seed": field(st.integers(-2**63, 2**64 - 1) if not hostile else st.integers(-2**65, 2**65)),
        "stop": field(st.one_of(texts.filter(bool), st.lists(texts.filter(bool), max_size=16))
                      if not hostile else st.one_of(texts, st.lists(texts, max_size=20), st.just(["x"] * 10000))),
        "stream": field(st.booleans()),
        "stream_options": field(st.fixed_dictionaries({"include_usage": st.booleans()})),
        "n": field(st.one_of(st.integers(1, 2), st.integers(FUZZ_MAX_QUEUE - 1, FUZZ_MAX_QUEUE + 2))
                   if not hostile else st.integers(0, 20)),
        "logit_bias": field(st.dictionaries(st.integers(0, 49151).map(str), st.floats(-100, 100), max_size=3)),
        "user": field(texts),
        "response_format": field(st.just({"type": "text"})),
    }
    if hostile:
        common |= {"logit_bias": json_values, "logprobs": json_values, "top_logprobs": json_values}
    messages = field(st.lists(st.fixed_dictionaries({
        "role": field(st.sampled_from(["system", "user", "assistant"])), "content": field(texts)}),
        min_size=0 if hostile else 1, max_size=4))
    prompt = field(st.one_of(texts, st.lists(texts, max_size=2)) if hostile else texts.filter(bool))
    return common, messages, prompt


def _bodies(key: str) -> st.SearchStrategy:
    """Half plausible bodies (they reach the engine: sampling, stops, streaming), half hostile ones."""
    variants = []
    for hostile in (False, True):
        common, messages, prompt = _fields(hostile)
        if not hostile:  # the endpoints' own logprobs fields (a bool and a count, or the legacy count)
            common |= ({"logprobs": st.booleans(), "top_logprobs": st.integers(0, 5)} if key == "messages"
                       else {"logprobs": st.integers(0, 5)})
        variants.append(st.fixed_dictionaries({key: messages if key == "messages" else prompt}, optional=common))
    return st.one_of(*variants)


chat_bodies = _bodies("messages")
completion_bodies = _bodies("prompt")

# ---- output constraints ----
_repeat = st.integers(0, 120).map(str)
_atoms = st.sampled_from(["a", "ab", "[a-z]", r"\d", ".", r"\p{L}", "(a|b)", "(a*)*"])


@st.composite
def _regexes(draw) -> str:
    """Nested counted repeats and alternations: cheap ones, and ones whose lexer can't be built."""
    text = draw(_atoms)
    for _ in range(draw(st.integers(0, 3))):
        low = draw(_repeat)
        high = draw(st.one_of(st.just(""), st.just(","), _repeat.map(lambda h: f",{h}")))
        text = f"({text}){{{low}{high}}}" if not (high.startswith(",") and high[1:] and int(high[1:]) < int(low)) \
            else f"({text})*"
        if draw(st.booleans()):
            text += draw(_atoms)
    return text


def _schemas() -> st.SearchStrategy:
    leaf = st.one_of(
        st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "number", "boolean", "null"])}),
        _regexes().map(lambda r: {"type": "string", "pattern": f"^{r}$"}),
        st.integers(0, 100_000).map(lambda n: {"type": "string", "minLength": n}),
        st.sampled_from([{"$ref": "#"}, {"$ref": "#/$defs/a"}, {"$ref": "#/$defs/missing"}, {"$ref": "#/properties"},
                         {"type": "string", "format": "date-time"}, {"enum": ["x", 1, None]}]),
    )
    return st.recursive(leaf, lambda inner: st.one_of(
        st.fixed_dictionaries({"type": st.just("object"), "properties": st.dictionaries(
            st.sampled_from(["a", "b", "c"]), inner, max_size=3)}, optional={"required": st.just(["a"])}),
        st.fixed_dictionaries({"type": st.just("array"), "items": inner}, optional={"minItems": st.integers(0, 5)}),
        st.lists(inner, min_size=1, max_size=3).map(lambda xs: {"anyOf": xs}),
        st.tuples(inner, inner).map(lambda ab: {"$defs": {"a": ab[0], "b": {"$ref": "#/$defs/a"}}, **ab[1]}),
    ), max_leaves=8)


_lark = st.sampled_from([
    "start: a\na: a", "start: a\na: b\nb: a", 'start: "x"*', "start: X\nX: /((a{100}){100}){100}/",
    'start: a\na: "(" a ")" | "x"', "start: %json {\"type\": \"integer\"}", "start: ",
])


def _tool(schema: dict) -> dict:
    return {"type": "function", "function": {"name": "f", "parameters": {
        "$defs": {"a": schema}, "type": "object", "properties": {"x": {"$ref": "#/$defs/a"}}, "required": ["x"]}}}


constraint_fields = st.one_of(
    _regexes().map(lambda r: {"guided_regex": r}),
    _schemas().map(lambda s: {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": s}}}),
    _schemas().map(lambda s: {"guided_json": s}),
    _lark.map(lambda g: {"guided_grammar": g}),
    _schemas().map(lambda s: {"tools": [_tool(s)], "tool_choice": "required"}),
)
CONSTRAINT_PARAMS = ("guided_regex", "guided_json", "guided_grammar", "response_format", "tools", "tool_choice")


@st.composite
def _constrained(draw) -> dict:
    body = {"messages": [{"role": "user", "content": draw(st.sampled_from(["hi", "Give JSON.", "Call f."]))}],
            "max_tokens": draw(st.integers(1, 4)), "stream": draw(st.booleans()), "temperature": 0}
    return body | draw(constraint_fields)


constrained_bodies = _constrained()


# ---- Ollama's /api/chat and /api/generate (issue 27) ----
OLLAMA_MODEL = "fuzz"  # the fuzz servers' --model-name (Ollama's clients add ":latest")


def _ollama_bodies(chat: bool, hostile: bool) -> st.SearchStrategy:
    """Ollama's field names and shapes: options, format ("json" or a schema), think, keep_alive,
    images, tool turns; hostile ones put garbage in any field, options included."""
    def field(plausible: st.SearchStrategy) -> st.SearchStrategy:
        return st.one_of(plausible, plausible, json_values) if hostile else plausible

    options = st.fixed_dictionaries({}, optional={
        "temperature": field(st.floats(0, 2)), "top_p": field(st.floats(0.01, 1)), "top_k": field(st.integers(0, 50)),
        "min_p": field(st.floats(0, 1)), "seed": field(st.integers(-2**63, 2**64 - 1)),
        "num_predict": field(st.integers(-2, 4)), "num_ctx": field(st.integers(-1, 10**6)),
        "stop": field(st.one_of(texts.filter(bool), st.lists(texts.filter(bool), max_size=8))),
        "repeat_penalty": field(st.floats(0.01, 10)), "presence_penalty": field(st.floats(-2, 2)),
        "frequency_penalty": field(st.floats(-2, 2)), "mirostat": field(st.integers(0, 2))})
    common = {
        # hostile schemas are constrained_bodies' class (format becomes the same response_format)
        "format": field(st.sampled_from(["json", "", {"type": "object", "properties": {"a": {"type": "integer"}},
                                                      "required": ["a"]}])),
        "options": field(options), "stream": field(st.booleans()),
        "think": field(st.one_of(st.booleans(), st.sampled_from(["low", "high"]))),
        "keep_alive": field(st.one_of(st.integers(-1, 600), st.just("5m"))),
    }
    model = field(st.sampled_from([OLLAMA_MODEL, OLLAMA_MODEL + ":latest", "other:7b"]))
    if chat:
        message = st.fixed_dictionaries(
            {"role": field(st.sampled_from(["system", "user", "assistant", "tool"])), "content": field(texts)},
            optional={"images": field(st.just(["aGk="])), "thinking": field(texts), "tool_name": field(texts),
                      "tool_calls": field(st.just([{"function": {"name": "f", "arguments": {"x": "1"}}}]))})
        common["tools"] = field(st.just([_tool({"type": "string"})]))
        return st.fixed_dictionaries({"model": model, "messages": field(
            st.lists(message, min_size=0 if hostile else 1, max_size=3))}, optional=common)
    common |= {"system": field(texts), "raw": field(st.booleans()), "suffix": field(texts),
               "images": field(st.just(["aGk="]))}
    return st.fixed_dictionaries({"model": model, "prompt": field(texts)}, optional=common)


ollama_chat_bodies = st.one_of(_ollama_bodies(True, False), _ollama_bodies(True, True))
ollama_generate_bodies = st.one_of(_ollama_bodies(False, False), _ollama_bodies(False, True))


def _as_number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return float(value)
    except (ValueError, OverflowError):
        return None


def bounded_ollama(body: dict) -> dict:
    """Keeps a run's cost bounded: options.num_predict stays within 1..4 when it reads as a number
    (Ollama's -1 and -2, and no value, mean the server's default: the whole context)."""
    options = body.get("options")
    if options is None:
        options = {}
    if isinstance(options, dict):
        n = _as_number(options.get("num_predict", 0))
        if n is not None and not 1 <= n <= 4:
            body = {**body, "options": {**options, "num_predict": 4}}
    return body


def check_ollama_answer(client: httpx.Client, path: str, body: dict) -> int:
    """Sends one Ollama body and checks the answer: a 200 of JSON lines (one when not streamed) whose
    last says done and whose others don't, none an error; or an error in Ollama's shape
    ({"error": "..."}, short, no traceback) with 400 (a bad field), 404 (no such model) or 413."""
    with client.stream("POST", path, content=encode(bounded_ollama(body)),
                       headers={"content-type": "application/json"}) as r:
        raw = r.read().decode("utf-8", errors="replace")
    assert r.status_code in (200, 400, 404, 413), f"{r.status_code} for {body!r:.300}: {raw[:300]}"
    assert "Traceback" not in raw and "site-packages" not in raw and 'File "' not in raw, raw[:500]
    lines = [json.loads(line) for line in raw.splitlines() if line.strip()]
    if r.status_code != 200:
        assert len(lines) == 1 and set(lines[0]) == {"error"}, raw[:300]
        assert isinstance(lines[0]["error"], str) and 0 < len(lines[0]["error"]) <= 1000, lines[0]
        assert "%json" not in lines[0]["error"] and "start:" not in lines[0]["error"], lines[0]
        return r.status_code
    assert lines and not any("error" in x for x in lines), raw[-300:]
    assert [x["done"] for x in lines] == [False] * (len(lines) - 1) + [True], raw[-300:]
    assert lines[-1]["done_reason"] in ("stop", "length", "load"), lines[-1]
    return r.status_code


def bounded(body: dict) -> dict:
    """Keeps a run's cost bounded: a plausible max_tokens stays small (garbage values stay garbage)."""
    if body.get("max_tokens") is None or (isinstance(body.get("max_tokens"), int) and body["max_tokens"] > 4):
        body = {**body, "max_tokens": 4}
    return body


def encode(body: dict) -> bytes:
    """JSON as hostile clients send it: NaN/Infinity literals and lone surrogates allowed."""
    return json.dumps(body, allow_nan=True).encode()


def check_answer(client: httpx.Client, path: str, body: dict, busy: bool = False) -> int:
    """Sends one body and checks the answer: a 200 whose stream ends properly, or a 4xx in OpenAI's
    error shape with a short message; never a 5xx, a traceback or a file path, nor a 429 from an
    idle server (busy: other requests run meanwhile). Returns the status."""
    with client.stream("POST", path, content=encode(bounded(body)), headers={"content-type": "application/json"}) as r:
        raw = r.read().decode("utf-8", errors="replace")
    assert r.status_code in ((200, 400, 413, 429) if busy else (200, 400, 413)), \
        f"{r.status_code} for {body!r:.300}: {raw[:300]}"
    assert "Traceback" not in raw and "site-packages" not in raw and 'File "' not in raw, raw[:500]
    if r.status_code != 200:
        err = json.loads(raw)["error"]
        assert isinstance(err["message"], str) and 0 < len(err["message"]) <= 1000, err
        assert isinstance(err["code"], str) and err["code"], err  # every refusal names its reason
        assert "%json" not in err["message"] and "start:" not in err["message"], err  # no internal grammar
        if err["code"] == "invalid_constraint":
            assert str(err["param"]).split(".")[0].split("[")[0] in CONSTRAINT_PARAMS, err
    elif raw.startswith("data:"):
        events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]", events[-3:]
        assert not any('"error"' in e[:20] for e in events), events[-3:]
    else:
        assert all(c["finish_reason"] in ("stop", "length") for c in json.loads(raw)["choices"])
    return r.status_code


# ---- encoder routes (issue 26): /v1/embeddings, /embed, /v1/rerank (and TEI's rerank), /api/embed ----
def _maybe(plausible: st.SearchStrategy) -> st.SearchStrategy:
    return st.one_of(plausible, plausible, json_values)


_ids = st.integers(-3, 1100)  # the fuzz encoders' vocabularies are about 1,000 ids: some fall outside
_inputs = st.one_of(texts, st.lists(texts, max_size=5), st.lists(_ids, min_size=0, max_size=6),
                    st.lists(st.lists(_ids, max_size=5), max_size=3), st.lists(st.one_of(texts, _ids), max_size=3))
embedding_bodies = st.fixed_dictionaries({"input": _maybe(_inputs)}, optional={
    "model": _maybe(texts), "encoding_format": _maybe(st.sampled_from(["float", "base64"])),
    "dimensions": _maybe(st.integers(-1, 20)), "truncate": _maybe(st.booleans()), "user": _maybe(texts)})
tei_bodies = st.fixed_dictionaries({"inputs": _maybe(st.one_of(texts, st.lists(texts, max_size=5)))}, optional={
    "normalize": _maybe(st.booleans()), "truncate": _maybe(st.booleans()),
    "truncation_direction": _maybe(st.sampled_from(["Right", "Left", "up"])), "dimensions": _maybe(st.integers(-1, 20))})
_documents = st.lists(st.one_of(texts, st.fixed_dictionaries({"text": _maybe(texts)})), max_size=5)
rerank_bodies = st.one_of(
    st.fixed_dictionaries({"query": _maybe(texts), "documents": _maybe(_documents)}, optional={
        "top_n": _maybe(st.integers(-1, 8)), "return_documents": _maybe(st.booleans()),
        "truncate": _maybe(st.booleans()), "model": _maybe(texts)}),
    st.fixed_dictionaries({"query": _maybe(texts), "texts": _maybe(st.lists(texts, max_size=5))}, optional={
        "raw_scores": _maybe(st.booleans()), "return_text": _maybe(st.booleans()), "top_n": _maybe(st.integers(-1, 8))}))
ollama_embed_bodies = st.fixed_dictionaries({"model": _maybe(st.sampled_from(["fuzz-embed", "fuzz-embed:latest"])),
                                             "input": _maybe(st.one_of(texts, st.lists(texts, max_size=4)))},
                                            optional={"truncate": _maybe(st.booleans()),
                                                      "dimensions": _maybe(st.integers(-1, 20))})
ENCODER_BODIES = {"/v1/embeddings": embedding_bodies, "/embed": tei_bodies, "/v1/rerank": rerank_bodies,
                  "/api/embed": ollama_embed_bodies}


def check_encoder_answer(client, path: str, body: dict) -> int:
    """One body to an encoder route: a 200 of the route's shape, or a 4xx whose error names its reason
    (OpenAI's shape; Ollama's {"error": "..."} on /api/*); never a 5xx or a traceback."""
    r = client.post(path, content=encode(body), headers={"content-type": "application/json"})
    raw = r.text
    assert r.status_code in (200, 400, 404, 413), f"{r.status_code} for {body!r:.300}: {raw[:300]}"
    assert "Traceback" not in raw and "site-packages" not in raw and 'File "' not in raw, raw[:500]
    answer = json.loads(raw)
    if r.status_code != 200:
        err = answer["error"]
        message = err if path.startswith("/api/") else err["message"]
        assert isinstance(message, str) and 0 < len(message) <= 1000, err
        if not path.startswith("/api/"):
            assert isinstance(err["code"], str) and err["code"], err
    elif path == "/v1/embeddings":
        assert [d["index"] for d in answer["data"]] == list(range(len(answer["data"]))) and answer["data"]
    elif path == "/embed":
        assert isinstance(answer, list) and all(isinstance(v, list) for v in answer)
    elif path == "/v1/rerank":
        scores = [x["score" if isinstance(answer, list) else "relevance_score"]
                  for x in (answer if isinstance(answer, list) else answer["results"])]
        assert scores == sorted(scores, reverse=True)
    else:
        assert isinstance(answer["embeddings"], list)
    return r.status_code
