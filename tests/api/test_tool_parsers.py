"""The tool-call parser registry: every name the settings accept has a parser."""

from __future__ import annotations

from typing import Literal, get_args, get_origin

from api.tool_parsers import TOOL_CALL_PARSERS, new_tool_parser, parse_tool_calls
from conveyor.cli import build_parser
from conveyor.settings import Settings


def test_every_configurable_parser_exists_and_reads_plain_text_as_content() -> None:
    annotation = Settings.model_fields["tool_call_parser"].annotation
    names = {
        name
        for member in get_args(annotation)
        if get_origin(member) is Literal
        for name in get_args(member)
    }
    assert names == set(TOOL_CALL_PARSERS)
    for name in names:
        assert new_tool_parser(name).feed("Hello.", final=True) == ({"content": "Hello."}, False)
        assert parse_tool_calls(name, "Hello.").content == "Hello."
        args = build_parser().parse_args(["serve", "--tool-call-parser", name])
        assert args.tool_call_parser == name
