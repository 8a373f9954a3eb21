"""Request preparation shared by every generating route (OpenAI's and Ollama's): the prompt through
the chat template, the output constraint (response_format / guided_* / tools) compiled to a grammar,
and the sampling parameters, each refusal a 400 naming the field."""

from __future__ import annotations

from dataclasses import replace

from ..engine.reasoning import starts_inside
from ..engine.sampling import SamplingParams
from ..model.chat_template import ChatTemplateError
from ..model.thinking_tags import markers_for
from ..structured import tools as tool_calls
from ..structured.call_loop import guard_calls
from ..structured.constraints import Constraint, ConstraintError, compile_constraint, from_request, json_schema_grammar
from .intake import ApiError
from .protocol import ChatCompletionRequest, CommonRequest
from .state import ServerState


def _chat_prompt_ids(tokenizer, messages: list[dict], tools: list | None = None, variables=None) -> list[int]:
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, variables=variables)
    except ChatTemplateError as e:
        raise ApiError(400, str(e)[:500], param="messages", code="invalid_value") from None


def _constraint_error(e: ConstraintError) -> ApiError:
    return ApiError(400, str(e), param=e.param, code=e.code)


def output_grammar(tokenizer, req: CommonRequest):
    """The compiled matcher of the request's response_format / guided_* constraint (None: free text)."""
    try:
        constraint = from_request(req.response_format, req.guided_json, req.guided_regex, req.guided_choice,
                                  req.guided_grammar)
        return compile_constraint(tokenizer, constraint) if constraint is not None else None
    except ConstraintError as e:
        raise _constraint_error(e) from None


def prepare_chat(tokenizer, req: ChatCompletionRequest, reasoning_apart: bool):
    """(prompt ids, compiled grammar or None, (tool syntax, tool plan) or None) of a chat request.
    Tools pick the call syntax from the model's template (templates that render `tools` get
    Llama 3.1-style JSON calls, the others our generic <tool_call> format) and constrain the reply.
    reasoning_apart: --reasoning-format deepseek (the engine keeps a thinking section apart)."""
    try:
        plan = tool_calls.plan_from_request(req.tools, req.tool_choice, req.parallel_tool_calls)
    except ConstraintError as e:
        raise _constraint_error(e) from None
    grammar = output_grammar(tokenizer, req)
    if plan is not None and grammar is not None:
        raise ApiError(400, "tools and an output constraint (response_format / guided_*) can't be combined unless "
                       'tool_choice is "none"', param="tool_choice", code="invalid_constraint")
    messages = [m.as_template_message() for m in req.messages]
    has_tool_turns = any(m.get("tool_calls") or m["role"] == "tool" for m in messages)
    syntax = None
    if plan is not None or has_tool_turns:
        syntax = tool_calls.choose_syntax(tokenizer)
        messages, template_tools = tool_calls.prepare_messages(syntax, messages, plan)
    else:
        template_tools = None
    prompt_ids = _chat_prompt_ids(tokenizer, messages, template_tools, req.template_variables())
    if plan is None:
        return prompt_ids, grammar, None
    if reasoning_apart and syntax.think and starts_inside(tokenizer, markers_for(tokenizer), prompt_ids):
        # The prompt opened the section, the engine keeps it out of the grammar and the call parser
        # (engine/request_state.py): they see the answer after it, where a second section has no
        # place. Left in, the syntax's section let that answer open one, and a small model then
        # thought until max_tokens instead of making the call tool_choice forced.
        syntax = replace(syntax, think=None)
    try:
        grammar = compile_constraint(tokenizer, tool_calls.tool_grammar(syntax, plan))
    except ConstraintError as e:
        raise _constraint_error(_blame_tool(tokenizer, plan) or e) from None
    # the reply ends at a call it already made (the grammar can't say "not again")
    return prompt_ids, guard_calls(grammar, syntax, plan, tokenizer), (syntax, plan)


def _blame_tool(tokenizer, plan) -> ConstraintError | None:
    """The refusal of the first allowed function whose parameters can't be enforced on their own,
    naming it (`tools[2].function.parameters`) with references as the client wrote them; None if
    each compiles alone (the calls' grammar as a whole failed)."""
    allowed = {f.name for f in plan.allowed}
    for i, f in enumerate(plan.functions):
        if f.name not in allowed:
            continue
        where = f"tools[{i}].function.parameters"
        try:
            schema = json_schema_grammar(tool_calls.closed_objects(f.parameters), where)
            compile_constraint(tokenizer, Constraint(schema, "tools", where))
        except ConstraintError as e:
            return e
    return None


def sampling_params(state: ServerState, req: CommonRequest, n_prompt: int, chat: bool, grammar=None) -> SamplingParams:
    asked = (getattr(req, "max_completion_tokens", None) if chat else None) or req.max_tokens
    if asked is None:  # the server's default, cut to what the context and the KV cache can still hold
        room = state.engine.max_total_tokens - n_prompt
        if room < 1:
            raise ApiError(400, f"the prompt has {n_prompt} tokens; at most {state.engine.max_total_tokens - 1} "
                           "fit this server's context", param="messages" if chat else "prompt",
                           code="context_length_exceeded")
        asked = min(state.config.max_tokens, room)
    vocab = state.tokenizer.vocab_size
    for token in req.logit_bias or {}:
        if token >= vocab:
            raise ApiError(400, f"logit_bias: token id {token} is not in this model's vocabulary (0..{vocab - 1})",
                           param="logit_bias", code="invalid_value")
    try:
        return SamplingParams(
            temperature=state.config.temperature if req.temperature is None else req.temperature,
            top_p=1.0 if req.top_p is None else req.top_p, top_k=req.top_k or 0, min_p=req.min_p or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0, presence_penalty=req.presence_penalty or 0.0,
            repetition_penalty=req.repetition_penalty or 1.0, seed=req.seed, max_tokens=asked, stop=req.stop or [],
            logprobs=req.top_logprobs_asked(), logit_bias=req.logit_bias or {}, grammar=grammar,
            ignore_eos=req.ignore_eos, reasoning=chat and state.config.reasoning_format == "deepseek",
            reasoning_budget=_reasoning_budget(state, req))
    except ValueError as e:  # "<field> must be ...": the field is the first word
        raise ApiError(400, str(e), param=str(e).split(" ", 1)[0], code="invalid_value") from None


def _reasoning_budget(state: ServerState, req: CommonRequest) -> int | None:
    """The request's thinking_budget, else the server's --reasoning-budget (None: no limit)."""
    asked = getattr(req, "thinking_budget", None)
    if asked is not None:
        return asked
    return state.config.reasoning_budget if state.config.reasoning_budget >= 0 else None


def prepare_completion(tokenizer, req: CommonRequest):
    """(prompt ids, compiled grammar or None) of a plain-prompt request (no template, no tools)."""
    if getattr(req, "tools", None) is not None or getattr(req, "tool_choice", None) is not None:
        raise ApiError(400, "tools are supported on /v1/chat/completions only", param="tools",
                       code="unsupported_parameter")
    return tokenizer.encode(req.prompt, add_bos=tokenizer.add_bos), output_grammar(tokenizer, req)
