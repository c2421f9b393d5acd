"""The "olmo3" tool-call parser: OLMo 3's Python calls inside `<function_calls>`.

Offered tools, an OLMo 3 model answers a call with the whole message as

    <function_calls>
    get_weather(city="Paris", unit=null)
    get_time()
    </function_calls>

one call per line (or statement), arguments as keyword literals. Since the
system prompt describes the tools in JSON, values may be spelled `null`, `true`
and `false`, which read as JSON's. Calls are read with Python's `ast` as the
"pythonic" parser reads them, literals only, so nothing the model wrote is run.
An answer that begins with `<function_calls>` is read when it ends
(`api/whole_answer_tool_parser.py`); anything else streams as content at once,
and held text that is not all calls goes out unchanged.
"""

from __future__ import annotations

import ast
from typing import Any

from api.pythonic_tool_parser import call_list, quiet_parse
from api.whole_answer_tool_parser import WholeAnswerCallStream

FUNCTION_CALLS, FUNCTION_CALLS_END = "<function_calls>", "</function_calls>"
_JSON_NAMES = {"null": None, "true": True, "false": False}


class Olmo3Stream(WholeAnswerCallStream):
    openers = (FUNCTION_CALLS,)

    def read_calls(self, text: str) -> list[dict[str, Any]] | None:
        body = text.strip().removeprefix(FUNCTION_CALLS).strip()
        body = body.removesuffix(FUNCTION_CALLS_END).strip()
        try:
            module = quiet_parse(body, "exec")
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            return None
        if not module.body or not all(isinstance(s, ast.Expr) for s in module.body):
            return None
        calls = [_JsonNames().visit(s.value) for s in module.body]  # type: ignore[attr-defined]
        return call_list(calls)


class _JsonNames(ast.NodeTransformer):
    """`null`, `true` and `false` as the constants they mean in JSON."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if node.id in _JSON_NAMES:
            return ast.copy_location(ast.Constant(_JSON_NAMES[node.id]), node)
        return node
