"""The path a route sees: the request's path without `--root-path`'s prefix.

uvicorn puts the root path in front of `scope["path"]` (`/llm/v1/files` behind a proxy
serving the API under `/llm`), and Starlette's router takes it off again. Middleware that
picks requests by path must take it off the same way, or every such request slips past
it (request logs, the upload limit, /invocations' routing).
"""

from __future__ import annotations

from collections.abc import Collection

from starlette.types import Scope


def route_path(scope: Scope) -> str:
    path: str = scope["path"]
    root = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    rest = path[len(root) :]
    return rest if rest.startswith("/") or not rest else path


def with_route_path(scope: Scope, path: str) -> Scope:
    """`scope` for the route at `path` instead, under the same root path."""
    full = scope.get("root_path", "") + path
    return {**scope, "path": full, "raw_path": full.encode()}


def posted_to(scope: Scope, paths: Collection[str]) -> bool:
    """Whether `scope` is an HTTP POST to one of `paths` (as routes see them)."""
    return scope["type"] == "http" and scope["method"] == "POST" and route_path(scope) in paths
