"""vLLM's --middleware: an operator's own ASGI middleware (a gateway's auth check, a
header, an audit log), named by import path and added to every API process.

As in vLLM: a class is added with `app.add_middleware(cls)`, an async function
`(request, call_next)` with `@app.middleware("http")`. Why here rather than in a proxy:
it runs inside the API, beside conveyor's own keys and limits, with no extra hop. A path
that does not import, or names anything else, stops start-up saying so.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI

FLAG = "--middleware"


class MiddlewareError(ValueError):
    """A --middleware path that cannot be used; said in one line at start-up."""


def load_middleware(path: str) -> Any:
    """The object `path` names: `package.module.name` (or `package.module:name`)."""
    module_name, sep, attribute = path.replace(":", ".").rpartition(".")
    if not sep or not module_name or not attribute:
        raise MiddlewareError(f"{FLAG} {path!r}: expected an import path, module.name")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise MiddlewareError(f"{FLAG} {path!r}: cannot import {module_name}: {exc}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise MiddlewareError(f"{FLAG} {path!r}: {module_name} has no {attribute}") from None


def add_custom_middleware(app: FastAPI, paths: Sequence[str]) -> None:
    """Add each path's middleware to `app`; a later one wraps the earlier ones."""
    for path in paths:
        middleware = load_middleware(path)
        if inspect.isclass(middleware):
            app.add_middleware(middleware)
        elif inspect.iscoroutinefunction(middleware):
            app.middleware("http")(middleware)
        else:
            raise MiddlewareError(
                f"{FLAG} {path!r}: expected an ASGI middleware class or an async function "
                f"(request, call_next), got {type(middleware).__name__}"
            )
