"""Ollama's shapes from our parts (sysinfer/server/ollama_routes.py, ollama_shapes.py): tool calls as Ollama writes them (arguments
an object), whole and streamed alike; `format` and `options` as the OpenAI request they mean."""

from __future__ import annotations

import pytest

from sysinfer.server import ollama_routes, ollama_shapes
from sysinfer.server.intake import ApiError
from sysinfer.structured import tools as tool_calls
from sysinfer.structured.tool_parser import ToolCallParser

WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
REPLY = 'Let me look.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


def _parser():
    return ToolCallParser(tool_calls.HERMES, tool_calls.plan_from_request([WEATHER], None, None))


def test_tool_calls_in_ollamas_shape_whole_and_streamed():
    content, found = _parser().feed(REPLY, final=True)
    whole = ollama_routes._ollama_calls(found)
    assert content == "Let me look."
    assert whole == [{"function": {"index": 0, "name": "get_weather", "arguments": {"city": "Paris"}}}]
    parser, streamed, text = _parser(), [], ""
    for i in range(0, len(REPLY), 5):
        piece, found = parser.feed(REPLY[i:i + 5], final=i + 5 >= len(REPLY))
        text += piece
        streamed += ollama_routes._ollama_calls(found)
    assert (text, streamed) == (content, whole)


def test_ollama_request_as_openai_fields():
    body = ollama_shapes.ChatBody(model="m", messages=[{"role": "user", "content": "hi"}], format={"type": "object"},
                               options={"num_predict": -1, "repeat_penalty": 1.2, "stop": "x", "mirostat": 1})
    fields = ollama_shapes.openai_fields(body)
    assert fields == {"repetition_penalty": 1.2, "stop": "x",  # num_predict -1: the server's default
                      "response_format": {"type": "json_schema", "json_schema": {"name": "format",
                                                                                "schema": {"type": "object"}}}}
    assert ollama_shapes._format("json") == {"type": "json_object"} and ollama_shapes._format("") is None
    with pytest.raises(ApiError, match="format must be"):
        ollama_shapes._format(3)


def test_refusals_name_the_ollama_field():
    body = ollama_shapes.ChatBody(model="m", messages=[{"role": "user", "content": "hi"}],
                               options={"temperature": 9, "num_predict": 5})
    with pytest.raises(ApiError) as e:
        ollama_shapes.openai_chat(body)
    assert e.value.body["error"]["message"].startswith("options.temperature:")


def test_a_failed_generation_is_a_500_naming_it_not_an_internal_error(monkeypatch):
    """A delta with an error in a whole (non-streamed) answer: a 500 with the engine's message. Raised
    inside the disconnect watcher's task group it came out as an ExceptionGroup, which the route's
    guard turned into a bare "internal server error"."""
    import types

    import anyio

    from sysinfer.engine.request_state import Delta
    from sysinfer.server.metrics import Metrics

    class Engine:
        aborted = []

        def submit(self, prompt_ids, params, more_choices=()):
            return types.SimpleNamespace(request_id="r1")

        async def stream(self, seq):
            yield Delta("Hel", [1])
            yield Delta("", [], finish_reason="error", error="generation failed: the step raised")

        def abort_request(self, request_id):
            self.aborted.append(request_id)

    class Request:
        async def receive(self):
            await anyio.sleep_forever()

        async def is_disconnected(self):
            return False

    async def timed(state, deltas, received):
        async for d in deltas:
            yield d

    state = types.SimpleNamespace(engine=Engine(), metrics=Metrics())
    monkeypatch.setattr(ollama_routes, "sampling_params", lambda *a: None)
    monkeypatch.setattr(ollama_routes, "timed", timed)
    body = ollama_shapes.ChatBody(model="m", messages=[{"role": "user", "content": "hi"}], stream=False)
    req = ollama_shapes.openai_chat(body)

    async def run():
        await ollama_routes._answer(state, Request(), req, body, [1, 2], None, None, 0.0, chat=True)

    with pytest.raises(ApiError) as e:
        anyio.run(run)
    assert e.value.status == 500 and "the step raised" in e.value.body["error"]["message"]
    assert Engine.aborted == ["r1"]
