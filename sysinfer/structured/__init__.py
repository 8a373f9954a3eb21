"""Structured output: grammars compiled by llguidance over our GGUF vocabulary (vocabulary.py),
built from a request's response_format / guided_* fields (constraints.py) or its tools (tools.py),
and followed token by token during generation (grammar_state.py)."""
