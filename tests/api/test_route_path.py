"""route_path/posted_to: middleware sees paths the way Starlette's router does."""

from __future__ import annotations

from api.route_path import posted_to, route_path, with_route_path


def _scope(path: str, root: str = "", method: str = "POST", kind: str = "http") -> dict:
    return {"type": kind, "method": method, "path": path, "root_path": root}


def test_root_path_prefix_is_taken_off() -> None:
    assert route_path(_scope("/llm/v1/files", root="/llm")) == "/v1/files"
    assert route_path(_scope("/llm", root="/llm")) == ""


def test_path_outside_the_root_is_left_alone() -> None:
    assert route_path(_scope("/v1/files", root="/llm")) == "/v1/files"
    # a prefix that only matches part of a segment is not the root path
    assert route_path(_scope("/llmx/v1/files", root="/llm")) == "/llmx/v1/files"


def test_with_route_path_keeps_the_root() -> None:
    moved = with_route_path(_scope("/llm/invocations", root="/llm"), "/v1/chat/completions")
    assert moved["path"] == "/llm/v1/chat/completions"
    assert moved["raw_path"] == b"/llm/v1/chat/completions"
    assert route_path(moved) == "/v1/chat/completions"


def test_posted_to_needs_http_post_to_a_listed_path() -> None:
    paths = ("/v1/completions",)
    assert posted_to(_scope("/api/v1/completions", root="/api"), paths)
    assert not posted_to(_scope("/v1/completions", method="GET"), paths)
    assert not posted_to(_scope("/v1/completions", kind="websocket"), paths)
    assert not posted_to(_scope("/v1/chat/completions"), paths)
