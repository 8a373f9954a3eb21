"""A real third-party agent framework against the real server (SmolLM2): langchain-openai's
`with_structured_output` (json_schema and function_calling) and a `bind_tools` round trip that feeds
the tool's result back. What LangChain sends is its own business: these tests take its requests as
they come and check only what comes back."""

from __future__ import annotations

import json
from typing import Literal

import pytest
from pydantic import BaseModel, Field

from support.servers import start_server

langchain_openai = pytest.importorskip("langchain_openai")
from langchain_core.messages import HumanMessage, ToolMessage  # noqa: E402
from langchain_core.tools import tool  # noqa: E402


@pytest.fixture(scope="module")
def llm():
    proc, base, _ = start_server()
    yield langchain_openai.ChatOpenAI(base_url=base + "/v1", api_key="none", model="m", temperature=0,
                                      max_tokens=120, max_retries=0, timeout=120)
    proc.terminate()
    proc.wait(timeout=30)


class City(BaseModel):
    """A city and the country it is in."""
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population_millions: float = Field(ge=0, le=100)
    kind: Literal["capital", "other"]


@pytest.mark.parametrize("method", ["json_schema", "function_calling"])
def test_with_structured_output_returns_the_model(llm, method):
    city = llm.with_structured_output(City, method=method).invoke("Tell me about Paris.")
    assert isinstance(city, City)  # LangChain parsed and validated it with pydantic
    assert city.name and city.country


@tool
def get_weather(city: str, unit: Literal["celsius", "fahrenheit"]) -> str:
    """The current weather in a city."""
    return json.dumps({"city": city, "temperature": 21, "unit": unit, "sky": "sunny"})


def test_bind_tools_round_trip(llm):
    question = HumanMessage("What is the weather in Paris right now?")
    first = llm.bind_tools([get_weather], tool_choice="get_weather").invoke([question])
    assert len(first.tool_calls) == 1, first
    call = first.tool_calls[0]
    assert call["name"] == "get_weather" and call["id"]
    assert isinstance(call["args"]["city"], str) and call["args"]["unit"] in ("celsius", "fahrenheit")
    result = get_weather.invoke(call["args"])
    # the history carries the assistant's call and the tool's result back to the server
    answer = llm.bind_tools([get_weather]).invoke([question, first, ToolMessage(result, tool_call_id=call["id"])])
    assert answer.content or answer.tool_calls
    assert answer.response_metadata["finish_reason"] in ("stop", "length", "tool_calls")


def test_streamed_tool_calls_through_langchain(llm):
    """LangChain's own chunk merging of a streamed tool call gives the same call as the whole reply."""
    bound = llm.bind_tools([get_weather], tool_choice="get_weather")
    question = [HumanMessage("Weather in Berlin, in celsius?")]
    whole = bound.invoke(question)
    merged = None
    for chunk in bound.stream(question):
        merged = chunk if merged is None else merged + chunk
    assert [(c["name"], c["args"]) for c in merged.tool_calls] == [(c["name"], c["args"]) for c in whole.tool_calls]


# ---- a thinking model (issue 25): EulerCopilot's RAG service calls it through ChatOpenAI ----

@pytest.fixture(scope="module")
def thinking_llm():
    from support.model_files import smollm2_thinking

    proc, base, _ = start_server(SYSINFER_MODEL=smollm2_thinking(), SYSINFER_REASONING_BUDGET="12")
    yield langchain_openai.ChatOpenAI(base_url=base + "/v1", api_key="none", model="m", temperature=0,
                                      max_tokens=120, max_retries=0, timeout=120)
    proc.terminate()
    proc.wait(timeout=30)


def test_thinking_model_content_is_the_answer_alone(thinking_llm):
    """The thinking goes to reasoning_content, which LangChain's ChatOpenAI leaves aside: content
    (what the RAG service reads, and would strip <think> blocks from) has no tags, whole or streamed."""
    reply = thinking_llm.invoke("What is the capital of France?")
    assert "<think>" not in reply.content and "</think>" not in reply.content
    assert reply.usage_metadata["output_token_details"].get("reasoning", 0) > 0
    streamed = "".join(chunk.content for chunk in thinking_llm.stream("What is the capital of France?"))
    assert streamed == reply.content


def test_thinking_model_structured_output_and_tools(thinking_llm):
    """The schema and the tool call hold the answer that follows the thinking."""
    city = thinking_llm.with_structured_output(City, method="json_schema").invoke("Tell me about Paris.")
    assert isinstance(city, City) and city.name
    first = thinking_llm.bind_tools([get_weather], tool_choice="get_weather").invoke("Weather in Paris?")
    assert len(first.tool_calls) == 1 and first.tool_calls[0]["name"] == "get_weather"
    assert first.tool_calls[0]["args"]["unit"] in ("celsius", "fahrenheit")
