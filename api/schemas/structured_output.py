"""The request fields that constrain output: OpenAI's response_format and vLLM's guided fields.

Clients of `vllm serve` use any of three spellings: OpenAI's `response_format`
(json_object / json_schema), the older `guided_json` / `guided_regex` /
`guided_choice` / `guided_grammar`, and the newer `structured_outputs`
object. All become one engine `StructuredOutput`; asking for two at once is a
400, not a silent pick.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from pydantic import ConfigDict, Field

from api.errors import ApiError, not_supported
from api.schemas.null_means_default import NullMeansDefault
from engine.structured_output import (
    ANY_JSON_OBJECT,
    StructuredOutput,
    StructuredOutputError,
)


class JsonSchemaFormat(NullMeansDefault):
    """OpenAI's response_format.json_schema; `schema` absent means any JSON object."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)

    # Required, as OpenAI and vLLM require it (clients that pass none meet a 400 here
    # rather than on either of them).
    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(NullMeansDefault):
    model_config = ConfigDict(extra="allow")

    type: str
    json_schema: JsonSchemaFormat | None = None


class StructuredOutputsParams(NullMeansDefault):
    """vLLM's `structured_outputs` request object: exactly one of its constraints."""

    model_config = ConfigDict(extra="ignore")

    json_: Any = Field(default=None, alias="json")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = None
    json_object: bool | None = None
    structural_tag: Any = None
    disable_any_whitespace: bool = False
    whitespace_pattern: str | None = None


class StructuredOutputFields(NullMeansDefault):
    """Mixed into chat and completions requests."""

    response_format: ResponseFormat | None = None
    guided_json: Any = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    guided_whitespace_pattern: str | None = None
    # Accepted and ignored, as a client naming vLLM's backends expects: we have one.
    guided_decoding_backend: str | None = None
    structured_outputs: StructuredOutputsParams | None = None

    def structured_output(self) -> tuple[StructuredOutput | None, str]:
        """The requested constraint (or None) and the parameter that asked for it."""
        found = [
            *self._from_response_format(),
            *self._from_guided_fields(),
            *self._from_structured_outputs(),
        ]
        if len(found) > 1:
            names = ", ".join(name for name, _ in found)
            raise ApiError(
                400,
                f"only one structured output constraint may be given, got {names}",
                param=found[1][0],
            )
        if not found:
            return None, "response_format"
        name, constraint = found[0]
        return constraint, name

    def _from_response_format(self) -> list[tuple[str, StructuredOutput]]:
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return []
        whitespace = {"whitespace_pattern": self.guided_whitespace_pattern}
        if fmt.type == "json_object":
            return [("response_format", StructuredOutput("json", ANY_JSON_OBJECT, **whitespace))]
        if fmt.type == "json_schema":
            if fmt.json_schema is None:
                raise ApiError(
                    400,
                    "response_format.json_schema is required when type is json_schema",
                    param="response_format.json_schema",
                )
            if not fmt.json_schema.name:
                raise ApiError(
                    400,
                    "response_format.json_schema.name is required: name the format, as "
                    "OpenAI requires (a-z, A-Z, 0-9, _ and -)",
                    param="response_format.json_schema.name",
                )
            schema = fmt.json_schema.json_schema
            constraint = _json(
                "response_format",
                schema if schema is not None else ANY_JSON_OBJECT,
                **whitespace,
            )
            return [("response_format", constraint)]
        if fmt.type == "structural_tag":
            raise not_supported("response_format", "response_format of type 'structural_tag'")
        raise ApiError(
            400,
            f"response_format.type must be text, json_object or json_schema, got {fmt.type!r}",
            param="response_format.type",
        )

    def _from_guided_fields(self) -> list[tuple[str, StructuredOutput]]:
        found = []
        if self.guided_json is not None:
            found.append(
                (
                    "guided_json",
                    _json(
                        "guided_json",
                        self.guided_json,
                        whitespace_pattern=self.guided_whitespace_pattern,
                    ),
                )
            )
        if self.guided_regex is not None:
            found.append(("guided_regex", _make("guided_regex", "regex", self.guided_regex)))
        if self.guided_choice is not None:
            found.append(("guided_choice", _choice("guided_choice", self.guided_choice)))
        if self.guided_grammar is not None:
            found.append(
                ("guided_grammar", _make("guided_grammar", "grammar", self.guided_grammar))
            )
        return found

    def _from_structured_outputs(self) -> list[tuple[str, StructuredOutput]]:
        so = self.structured_outputs
        if so is None:
            return []
        whitespace = {
            "whitespace_pattern": so.whitespace_pattern or self.guided_whitespace_pattern,
            "compact_json": so.disable_any_whitespace,
        }
        found: list[StructuredOutput] = []
        if so.json_ is not None:
            found.append(_json("structured_outputs", so.json_, **whitespace))
        if so.json_object:
            found.append(StructuredOutput("json", ANY_JSON_OBJECT, **whitespace))
        if so.regex is not None:
            found.append(_make("structured_outputs", "regex", so.regex))
        if so.choice is not None:
            found.append(_choice("structured_outputs", so.choice))
        if so.grammar is not None:
            found.append(_make("structured_outputs", "grammar", so.grammar))
        if so.structural_tag is not None:
            raise not_supported("structured_outputs.structural_tag", "structural tags")
        if len(found) != 1:
            raise ApiError(
                400,
                "structured_outputs must set exactly one of json, json_object, regex, choice "
                "or grammar",
                param="structured_outputs",
            )
        return [("structured_outputs", found[0])]


@contextmanager
def refused_as(param: str) -> Iterator[None]:
    """A StructuredOutputError inside becomes the client's 400 naming `param`."""
    try:
        yield
    except StructuredOutputError as exc:
        raise ApiError(400, f"{param}: {exc}", param=param) from None


def _json(param: str, schema: Any, **options: Any) -> StructuredOutput:
    with refused_as(param):
        return StructuredOutput.json_schema(schema, **options)


def _choice(param: str, options: list[str]) -> StructuredOutput:
    with refused_as(param):
        return StructuredOutput.choice(options)


def _make(param: str, kind: Any, spec: str) -> StructuredOutput:
    with refused_as(param):
        return StructuredOutput(kind, spec)
