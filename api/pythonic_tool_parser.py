"""The "pythonic" tool-call parser: calls written as a Python list of function calls.

Llama 3.2 and Llama 4 (and models trained like ToolACE) answer a call with the
whole message as `[get_weather(city="Paris"), get_time()]`, Llama 4 inside
`<|python_start|>` ... `<|python_end|>`. The answer is parsed with Python's
`ast` and every argument read with `ast.literal_eval` rules (strings, numbers,
True/False/None, lists, dicts, tuples), so nothing the model wrote is ever
run; arguments become JSON (True -> true, None -> null). A call with
positional arguments, a computed value or anything but a list of plain calls
is not a call: the text stays the answer.
"""

from __future__ import annotations

import ast
import json
import warnings
from typing import Any, Literal

from api.tool_choice import tool_call
from api.whole_answer_tool_parser import WholeAnswerCallStream

PYTHON_START, PYTHON_END = "<|python_start|>", "<|python_end|>"


class PythonicStream(WholeAnswerCallStream):
    openers = ("[", PYTHON_START)

    def read_calls(self, text: str) -> list[dict[str, Any]] | None:
        return _calls(text)


def _calls(text: str) -> list[dict[str, Any]] | None:
    body = text.strip()
    if body.startswith(PYTHON_START):
        body = body.removeprefix(PYTHON_START).strip().removesuffix(PYTHON_END).strip()
    try:
        tree = quiet_parse(body, "eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    if not isinstance(tree, ast.List) or not tree.elts:
        return None
    return call_list(tree.elts)


def quiet_parse(source: str, mode: Literal["eval", "exec"]) -> Any:
    """`ast.parse` of model text, without the SyntaxWarnings Python prints for odd
    literals ("invalid decimal literal" for `1or 2`) into the server's log."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ast.parse(source, mode=mode)


def call_list(nodes: list[ast.expr]) -> list[dict[str, Any]] | None:
    """Every node as a tool call, or None unless each is one."""
    calls = []
    for node in nodes:
        call = python_call(node)
        if call is None:
            return None
        calls.append(call)
    return calls


def python_call(node: ast.expr) -> dict[str, Any] | None:
    """`name(key=literal, ...)` as an OpenAI tool call; None for anything else."""
    if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Name) or node.args:
        return None
    arguments: dict[str, Any] = {}
    for keyword in node.keywords:
        if keyword.arg is None:  # **kwargs
            return None
        try:
            arguments[keyword.arg] = ast.literal_eval(keyword.value)
        except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError):
            return None
    try:
        encoded = json.dumps(arguments, ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError):  # sets, bytes, complex, inf: no JSON for them
        return None
    return tool_call(node.func.id, encoded)
