"""The rendering environment's additions (Hugging Face's, which the templates are written for):
the globals and filters a template may use besides jinja2's own. A leaf module: the worker process
(template_worker.py) builds its environment from it, chat_template.py from the same."""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache


class ChatTemplateError(ValueError):
    """A template that can't be rendered (bad syntax, refused operation, raise_exception, a limit)."""


def _raise_exception(message: str):
    raise ChatTemplateError(str(message))


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _tojson(value, ensure_ascii: bool = False, indent=None, separators=None, sort_keys: bool = False) -> str:
    """`tojson` as Hugging Face's renderer defines it (the one the templates were written for): keys in
    their order, non-ASCII kept, no HTML escapes. jinja2's own sorts keys and writes `<` as `\\u003c`,
    which would change every tool list a Qwen template renders."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class _TemplateDict:
    """`dict(...)` / `dict.fromkeys(...)` in a template, without the class itself (no attribute escapes)."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


@lru_cache(maxsize=1)
def _namespace_class():
    from jinja2.exceptions import SecurityError
    from jinja2.utils import Namespace

    def check(name) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise SecurityError(f"a namespace attribute may not start with '_' (got {name!r})")

    class TemplateNamespace(Namespace):
        """jinja2's namespace(), refusing underscore attribute names (as Hugging Face's renderer does)."""

        def __init__(*args, **kwargs):  # jinja2's signature trick: `self` may be an attribute name too
            self, args = args[0], args[1:]
            attrs = dict(*args, **kwargs)
            for name in attrs:
                check(name)
            Namespace.__init__(self, attrs)

        def __setitem__(self, name, value):
            check(name)
            Namespace.__setitem__(self, name, value)

    return TemplateNamespace


def template_globals() -> dict:
    """The functions a template may call besides jinja2's own (as Hugging Face's renderer offers)."""
    return {"raise_exception": _raise_exception, "strftime_now": _strftime_now, "dict": _TemplateDict(),
            "namespace": _namespace_class()}


def template_filters() -> dict:
    """Filters that replace jinja2's own, as Hugging Face's renderer replaces them."""
    return {"tojson": _tojson}
