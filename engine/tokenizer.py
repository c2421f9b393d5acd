"""The model's tokenizer and chat template, without torch.

This is the one engine module the HTTP API imports, so it must never pull in
torch: `AutoTokenizer` reads the model config through transformers' model code
(which imports torch), so we load the fast tokenizer class directly and read
config.json / generation_config.json as plain JSON.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import jinja2
from tokenizers import decoders
from transformers import PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import _compile_jinja_template

from engine.chat_template_kwargs import reserved_in
from engine.chat_template_source import read_chat_template
from engine.configuration_error import ConfigurationError

_BYTE_FALLBACK_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_METASPACE = "\u2581"  # SentencePiece's visible space
# The processor's template file of vision-language releases (transformers' legacy name).
PROCESSOR_CHAT_TEMPLATE_FILE = "chat_template.json"


class Tokenizer:
    """The model's tokenizer and chat template; the one engine module the API uses."""

    def __init__(
        self,
        hf_tokenizer: PreTrainedTokenizerFast,
        eos_token_ids: frozenset[int],
        *,
        content_as_parts: bool = False,
    ) -> None:
        self._hf = hf_tokenizer
        # vLLM's --chat-template-content-format openai: the template gets a message's
        # content as a list of text parts (otherwise the parts joined into one string).
        self.content_as_parts = content_as_parts
        self.vocab_size: int = len(hf_tokenizer)
        self.eos_token_ids: frozenset[int] = eos_token_ids
        self.bos_token_id: int | None = hf_tokenizer.bos_token_id
        self._added_ids = frozenset(hf_tokenizer.added_tokens_decoder)

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        chat_template: str | Path | None = None,
        content_format: str = "auto",
    ) -> Tokenizer:
        """Load from an HF folder; `chat_template` overrides the model's (a path or a literal).

        The override follows vLLM's --chat-template: an existing file is read, a value
        containing Jinja characters is the template itself, anything else is an error.
        `content_format` is vLLM's --chat-template-content-format: "openai" hands the
        template each message's content as a list of text parts; "auto" and "string" as
        one string (the text parts joined), which every text model's template reads.
        """
        model_dir = Path(model_dir)
        try:
            hf = PreTrainedTokenizerFast.from_pretrained(str(model_dir))
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"cannot load the tokenizer from {model_dir}: {exc}") from exc
        if chat_template is not None:
            hf.chat_template = read_chat_template(chat_template)
        else:
            processor = processor_chat_template(model_dir)
            if processor is not None:
                hf.chat_template = with_processor_template(hf.chat_template, processor)
        for template in _templates(hf.chat_template):
            try:
                _compile_jinja_template(template)
            except jinja2.TemplateError as exc:
                raise ConfigurationError(f"invalid chat template: {exc}") from exc
        eos = set(_config_eos_ids(model_dir))
        if hf.eos_token_id is not None:
            eos.add(hf.eos_token_id)
        return cls(hf, frozenset(eos), content_as_parts=content_format == "openai")

    @property
    def has_chat_template(self) -> bool:
        return bool(self._hf.chat_template)

    @property
    def hf_tokenizer(self) -> PreTrainedTokenizerFast:
        """The underlying transformers tokenizer, for callers that need more than this API."""
        return self._hf

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return list(self._hf.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._hf.decode(list(token_ids), skip_special_tokens=skip_special_tokens)

    @property
    def decodes_bytes_locally(self) -> bool:
        """Whether decode settles bytes a few at a time: byte-level BPE (GPT-2's) turns
        each bad or incomplete UTF-8 sequence into one U+FFFD where it stands, so text
        more than 4 bytes back never changes. SentencePiece byte fallback reads a whole
        run of byte tokens as one (all U+FFFD if any byte is bad), so a byte much later
        can still change it."""
        return self._vocab_style == "byte_level"

    @cached_property
    def special_token_ids(self) -> frozenset[int]:
        """The ids `decode(..., skip_special_tokens=True)` leaves out (special added tokens)."""
        return frozenset(i for i, t in self._hf.added_tokens_decoder.items() if t.special)

    def convert_ids_to_tokens(self, token_ids: Sequence[int]) -> list[str]:
        """Vocabulary strings; an id the tokenizer does not know (model padding rows) gives ''."""
        tokens = self._hf.convert_ids_to_tokens(list(token_ids))
        return [token if isinstance(token, str) else "" for token in tokens]

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes a token stands for (OpenAI's logprobs `bytes` field).

        A byte-level BPE token can hold part of a UTF-8 character, so decoding it
        alone gives U+FFFD, and SentencePiece drops a lone token's leading space;
        the vocabulary string keeps both, so the bytes come from it when we can.
        """
        if token_id not in self._added_ids:
            token = self._hf.convert_ids_to_tokens(token_id)
            if isinstance(token, str):
                if self._vocab_style == "byte_level":
                    raw = _byte_level_bytes(token, _BYTE_DECODER)
                    if raw is not None:
                        return raw
                elif match := _BYTE_FALLBACK_TOKEN.fullmatch(token):
                    return bytes([int(match.group(1), 16)])
                elif self._vocab_style == "metaspace":
                    return token.replace(_METASPACE, " ").encode("utf-8")
        return self.decode([token_id], skip_special_tokens=False).encode("utf-8")

    def token_bytes_repr(self, token_id: int) -> str:
        """A printable token string for logprobs; partial UTF-8 shows as 'bytes:\\xe4\\xb8'.

        Like vLLM, so a client never sees a bare U+FFFD for a token that is half a character.
        """
        raw = self.token_bytes(token_id)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + raw.decode("utf-8", errors="backslashreplace")

    def render_chat(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **template_kwargs: Any,
    ) -> str:
        """Render OpenAI-shaped messages through the chat template to prompt text."""
        if not self.has_chat_template:
            raise ValueError(
                "this model has no chat template; pass one with --chat-template "
                "or use the completions endpoint"
            )
        conversation = normalize_messages(
            messages,
            developer_as_system=not self._knows_developer,
            as_parts=self.content_as_parts,
        )
        reserved = reserved_in(template_kwargs)
        if reserved:
            raise ValueError(f"chat template kwargs may not set {reserved}")
        try:
            rendered = self._hf.apply_chat_template(
                conversation,
                tools=list(tools) if tools is not None else None,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
                **template_kwargs,
            )
        except jinja2.TemplateError as exc:
            raise ValueError(f"chat template error: {exc}") from exc
        except TypeError as exc:
            # The template did something its input does not support, e.g. `'x' + None`.
            raise ValueError(f"chat template error: {exc}") from exc
        assert isinstance(rendered, str)
        return rendered

    def apply_chat_template(
        self,
        messages: Sequence[Mapping[str, Any]],
        *,
        add_generation_prompt: bool = True,
        tools: Sequence[Mapping[str, Any]] | None = None,
        **template_kwargs: Any,
    ) -> list[int]:
        """Render and tokenize; the template writes its own BOS, so no special tokens are added."""
        text = self.render_chat(
            messages, add_generation_prompt=add_generation_prompt, tools=tools, **template_kwargs
        )
        return self.encode(text, add_special_tokens=False)

    @cached_property
    def _knows_developer(self) -> bool:
        """Whether the chat template renders OpenAI's `developer` role itself (gpt-oss's
        does); most predate it and would write it as an unknown role beside their default
        system prompt, so for them it is the system message OpenAI says it replaces."""
        return any("developer" in template for template in _templates(self._hf.chat_template))

    @cached_property
    def _vocab_style(self) -> str:
        """How vocabulary strings encode text: 'byte_level' (GPT-2), 'metaspace' (SentencePiece)."""
        backend = self._hf.backend_tokenizer
        if isinstance(backend.decoder, decoders.ByteLevel):
            return "byte_level"
        # A Sequence decoder does not expose its parts, but its JSON form names them.
        decoder = json.dumps(json.loads(backend.to_str()).get("decoder"), ensure_ascii=False)
        if '"ByteLevel"' in decoder:
            return "byte_level"
        if _METASPACE in decoder:
            return "metaspace"
        return "other"


def normalize_messages(
    messages: Sequence[Mapping[str, Any]],
    *,
    developer_as_system: bool = False,
    as_parts: bool = False,
) -> list[dict[str, Any]]:
    """Turn OpenAI chat messages into what HF chat templates expect.

    Templates concatenate `content` as a string, so text parts are joined with
    newlines (as vLLM does); other part types cannot be rendered by a text model.
    Tool-call arguments arrive as JSON strings but templates `tojson` them, so
    they are parsed back into objects. `developer_as_system`: for a template that
    does not know OpenAI's `developer` role. `as_parts` (vLLM's "openai" content
    format): content as a list of text parts instead, a string as one part.
    """
    if isinstance(messages, str | bytes) or not isinstance(messages, Sequence):
        raise ValueError("messages must be a list of message objects")
    if not messages:
        raise ValueError("messages must contain at least one message")
    out = []
    for index, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"messages[{index}] must be an object")
        role = message.get("role")
        if not isinstance(role, str):
            raise ValueError(f"messages[{index}].role must be a string")
        converted = dict(message)
        if developer_as_system and role == "developer":
            converted["role"] = "system"
        text = flatten_content(message.get("content"), index)
        converted["content"] = (
            _text_parts(message.get("content"), text) if as_parts and text is not None else text
        )
        if message.get("tool_calls"):
            converted["tool_calls"] = [_parse_tool_call(call) for call in message["tool_calls"]]
        out.append(converted)
    return out


# Parts that carry media rather than text (OpenAI's chat and Responses names, vLLM's).
_MEDIA_PARTS = {
    "image_url": "images",
    "input_image": "images",
    "image": "images",
    "input_audio": "audio",
    "audio_url": "audio",
    "video_url": "video",
    "file": "files",
    "input_file": "files",
}


def _text_parts(content: Any, text: str) -> list[dict[str, str]]:
    """vLLM's "openai" content: the text parts as sent (checked by `flatten_content`),
    or a string as one part."""
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    return [{"type": "text", "text": part["text"]} for part in content]


def flatten_content(content: Any, index: int) -> str | None:
    """A message's content as the one string a template reads (`index`: for errors)."""
    if content is None or isinstance(content, str):
        return content
    if not isinstance(content, Sequence):
        raise ValueError(f"messages[{index}].content must be a string or a list of parts")
    texts = []
    for part in content:
        if not isinstance(part, Mapping):
            raise ValueError(f"messages[{index}].content parts must be objects")
        kind = part.get("type")
        if kind in _MEDIA_PARTS:  # named by what they hold: the Messages API's `image`
            # blocks arrive here as chat's `image_url` parts
            raise ValueError(
                f"messages[{index}].content: this model reads text only, not "
                f"{_MEDIA_PARTS[kind]}; send 'text' parts"
            )
        if kind != "text":
            raise ValueError(
                f"messages[{index}].content: unsupported content part type {kind!r}; "
                "this model only accepts 'text' parts"
            )
        text = part.get("text")
        if not isinstance(text, str):
            raise ValueError(f"messages[{index}].content: a 'text' part needs a string 'text'")
        texts.append(text)
    return "\n".join(texts)


def _parse_tool_call(call: Any) -> Any:
    if not isinstance(call, Mapping):
        return call
    function = call.get("function")
    if isinstance(function, Mapping) and isinstance(function.get("arguments"), str):
        try:
            arguments = json.loads(function["arguments"])
        except (ValueError, RecursionError):  # not JSON, or past json's own limits
            return call
        return {**call, "function": {**function, "arguments": arguments}}
    return call


def processor_chat_template(model_dir: Path) -> str | None:
    """The template of a legacy `chat_template.json` (where Qwen2-VL's and Qwen3-VL's
    releases keep it, for their processors), which transformers' tokenizer does not
    read; None where the folder has none."""
    path = model_dir / PROCESSOR_CHAT_TEMPLATE_FILE
    if not path.is_file():
        return None
    try:
        template = json.loads(path.read_text(encoding="utf-8")).get("chat_template")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError) as exc:
        raise ConfigurationError(f"cannot read {path}: {exc}") from exc
    if template is not None and not isinstance(template, str):
        raise ConfigurationError(f"{path}: chat_template must be a string")
    return template


def with_processor_template(
    own: str | dict[str, str] | list | None, processor: str
) -> str | dict[str, str]:
    """The templates vLLM chooses between when a folder has a processor's: that one
    renders chats without tools, the tokenizer's own (its `tool_use` one where it names
    templates) chats with tools, as transformers picks a `tool_use` template. Qwen2.5-VL
    ships two that differ (the processor's default system prompt among them)."""
    if isinstance(own, list):  # the older form: [{"name": ..., "template": ...}]
        own = {entry["name"]: entry["template"] for entry in own}
    with_tools = own.get("tool_use") or own.get("default") if isinstance(own, dict) else own
    if not with_tools:
        return processor
    return {"default": processor, "tool_use": with_tools}


def _templates(chat_template: str | dict[str, str] | list | None) -> list[str]:
    """HF allows one template or several named ones (e.g. 'default' and 'tool_use')."""
    if not chat_template:
        return []
    if isinstance(chat_template, str):
        return [chat_template]
    if isinstance(chat_template, dict):
        return [t for t in chat_template.values() if isinstance(t, str)]
    return [t["template"] for t in chat_template if isinstance(t, dict) and "template" in t]


def _config_eos_ids(model_dir: Path) -> list[int]:
    """EOS ids declared by the model configs; generation may stop on several (e.g. Llama 3)."""
    found: list[int] = []
    for name in ("config.json", "generation_config.json"):
        path = model_dir / name
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        for section in (data, data.get("text_config") or {}):
            value = section.get("eos_token_id")
            values = value if isinstance(value, list) else [value]
            found.extend(v for v in values if isinstance(v, int) and not isinstance(v, bool))
    return found


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable char table that byte-level BPE vocabularies are written in."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _byte_level_bytes(token: str, byte_decoder: dict[str, int]) -> bytes | None:
    try:
        return bytes(byte_decoder[char] for char in token)
    except KeyError:
        return None


_BYTE_DECODER = {char: byte for byte, char in _bytes_to_unicode().items()}
