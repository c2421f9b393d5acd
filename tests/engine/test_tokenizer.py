"""Tokenizer: round trips, chat templates (model, file, literal), message shapes, no torch."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.tokenizer import Tokenizer, normalize_messages

REPO_ROOT = Path(__file__).resolve().parents[2]
SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def tok(bundled_model_dir: Path) -> Tokenizer:
    return Tokenizer.load(bundled_model_dir)


def _copy_tokenizer(src: Path, dst: Path, *, template: bool = True) -> Path:
    """A model folder without weights, for tests that change configs or templates."""
    dst.mkdir()
    names = ["tokenizer.json", "tokenizer_config.json", "config.json"]
    if template:
        names.append("chat_template.jinja")
    for name in names:
        shutil.copy(src / name, dst / name)
    return dst


@pytest.mark.parametrize(
    "text",
    ["Hello, world!", "  leading spaces", "héllo 世界 🎉", "tabs\tand\nnewlines\r\n", ""],
)
def test_encode_decode_round_trip(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert all(isinstance(i, int) for i in ids)
    assert tok.decode(ids) == text


def test_special_tokens(tok: Tokenizer) -> None:
    assert tok.vocab_size == 49152
    assert tok.eos_token_ids == frozenset({2})
    assert tok.bos_token_id == 1
    ids = [1, *tok.encode("hi"), 2]
    assert tok.decode(ids) == "hi"
    assert tok.decode(ids, skip_special_tokens=False) == "<|im_start|>hi<|im_end|>"
    assert tok.convert_ids_to_tokens([1, 2]) == ["<|im_start|>", "<|im_end|>"]


def test_eos_ids_merge_tokenizer_and_configs(bundled_model_dir: Path, tmp_path: Path) -> None:
    folder = _copy_tokenizer(bundled_model_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["eos_token_id"] = [2, 5]
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": 7}))
    assert Tokenizer.load(folder).eos_token_ids == frozenset({2, 5, 7})


def test_token_bytes_repr_marks_partial_utf8(tok: Tokenizer) -> None:
    ids = tok.encode("héllo 世界 🎉")
    reprs = [tok.token_bytes_repr(i) for i in ids]
    assert reprs[:4] == ["h", "é", "llo", " "]
    assert "bytes:\\xe4\\xb8" in reprs  # the first two bytes of 世
    assert all("\ufffd" not in r for r in reprs)
    # The token bytes put back together are the text's UTF-8.
    assert b"".join(tok.token_bytes(i) for i in ids) == "héllo 世界 🎉".encode()
    assert tok.token_bytes_repr(2) == "<|im_end|>"


def test_chat_template_renders_chatml(tok: Tokenizer) -> None:
    assert tok.has_chat_template
    text = tok.render_chat(HI)
    assert text == (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n"
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    )
    no_prompt = tok.render_chat(HI, add_generation_prompt=False)
    assert no_prompt == text.removesuffix("<|im_start|>assistant\n")
    ids = tok.apply_chat_template(HI)
    assert ids == tok.encode(text, add_special_tokens=False)
    assert ids[0] == 1  # the template's own <|im_start|>, a single special token
    assert ids.count(1) == 3


def test_developer_is_the_system_message_for_a_template_that_predates_it(
    tok: Tokenizer, bundled_model_dir: Path
) -> None:
    """SmolLM2's template knows no `developer`: written as-is it kept the default system
    prompt beside an unknown role; as OpenAI says, it takes the system message's place."""
    developer = [{"role": "developer", "content": "Be terse."}, *HI]
    assert tok.render_chat(developer) == tok.render_chat(
        [{"role": "system", "content": "Be terse."}, *HI]
    )
    assert SYSTEM not in tok.render_chat(developer)
    knows = "{% for m in messages %}[{{ m.role }}]{% endfor %}{# developer #}"
    assert Tokenizer.load(bundled_model_dir, chat_template=knows).render_chat(developer) == (
        "[developer][user]"
    )


def test_content_parts_are_flattened(tok: Tokenizer) -> None:
    parts = [{"type": "text", "text": "first"}, {"type": "text", "text": "second"}]
    assert tok.render_chat([{"role": "user", "content": parts}]) == tok.render_chat(
        [{"role": "user", "content": "first\nsecond"}]
    )


@pytest.mark.parametrize(
    ("messages", "match"),
    [
        ([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}], "not images"),
        ([{"role": "user", "content": [{"type": "input_audio"}]}], "text only, not audio"),
        ([{"role": "user", "content": [{"type": "cats"}]}], "'cats'"),
        ([{"role": "user", "content": [{"type": "text"}]}], "string 'text'"),
        ([{"role": "user", "content": 5}], "string or a list"),
        ([{"content": "no role"}], "role"),
        ([], "at least one"),
        ("hi", "list of message"),
    ],
)
def test_bad_messages_raise_value_error(tok: Tokenizer, messages: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        tok.render_chat(messages)  # type: ignore[arg-type]


def test_reserved_template_kwargs_are_rejected(tok: Tokenizer) -> None:
    with pytest.raises(ValueError, match="tokenize"):
        tok.render_chat(HI, tokenize=True)


def test_template_file_overrides_model_template(bundled_model_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "custom.jinja"
    path.write_text("{% for m in messages %}[{{ m.role }}] {{ m.content }}\n{% endfor %}")
    for value in (str(path), path):
        tok = Tokenizer.load(bundled_model_dir, chat_template=value)
        assert tok.render_chat(HI) == "[user] hi\n"


def test_literal_template_overrides_model_template(bundled_model_dir: Path) -> None:
    template = (
        "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}"
        "{% if add_generation_prompt %}>>{% endif %}{{ flavour | default('') }}"
    )
    tok = Tokenizer.load(bundled_model_dir, chat_template=template)
    assert tok.render_chat(HI) == "<|im_start|>hi>>"
    assert tok.render_chat(HI, add_generation_prompt=False, flavour="!") == "<|im_start|>hi!"
    assert tok.apply_chat_template(HI) == [1, *tok.encode("hi>>")]


def test_tools_and_tool_call_arguments_reach_the_template(bundled_model_dir: Path) -> None:
    template = (
        "{% for t in tools %}{{ t.function.name }};{% endfor %}"
        "{% for m in messages %}{% for c in m.tool_calls or [] %}"
        "{{ c.function.arguments.city }}{% endfor %}{% endfor %}"
    )
    tok = Tokenizer.load(bundled_model_dir, chat_template=template)
    tools = [{"type": "function", "function": {"name": "weather", "parameters": {}}}]
    call = {
        "id": "1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Oslo"}'},
    }
    messages = [*HI, {"role": "assistant", "content": None, "tool_calls": [call]}]
    assert tok.render_chat(messages, tools=tools) == "weather;Oslo"


def test_template_errors_become_value_errors(bundled_model_dir: Path) -> None:
    with pytest.raises(ValueError, match="invalid chat template"):
        Tokenizer.load(bundled_model_dir, chat_template="{% for %}")
    with pytest.raises(ValueError, match="looks like a file path"):
        Tokenizer.load(bundled_model_dir, chat_template="missing/template.jinja")
    tok = Tokenizer.load(bundled_model_dir, chat_template="{{ raise_exception('no system') }}")
    with pytest.raises(ValueError, match="no system"):
        tok.render_chat(HI)
    tok = Tokenizer.load(bundled_model_dir, chat_template="{{ messages[0].content + 1 }}")
    with pytest.raises(ValueError, match="chat template error"):
        tok.render_chat(HI)


def test_missing_template_raises(bundled_model_dir: Path, tmp_path: Path) -> None:
    tok = Tokenizer.load(_copy_tokenizer(bundled_model_dir, tmp_path / "m", template=False))
    assert not tok.has_chat_template
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template(HI)
    assert tok.decode(tok.encode("still tokenizes")) == "still tokenizes"


def test_a_processor_chat_template_renders_chats_without_tools(
    bundled_model_dir: Path, tmp_path: Path
) -> None:
    """Qwen2-VL's and Qwen3-VL's releases keep a template in the processor's
    chat_template.json; vLLM renders chats without tools with it and chats with tools
    with the tokenizer's own (Qwen2.5-VL's two differ). A folder with only the
    processor's uses it for both; a file that cannot be read is a clear error."""
    folder = _copy_tokenizer(bundled_model_dir, tmp_path / "vl", template=False)
    template = "{% for m in messages %}<{{ m.role }}>{{ m.content }}{% endfor %}"
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": template}))
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    alone = Tokenizer.load(folder)
    assert alone.render_chat(HI) == alone.render_chat(HI, tools=tools) == "<user>hi"
    both = _copy_tokenizer(bundled_model_dir, tmp_path / "both")
    shutil.copy(folder / "chat_template.json", both / "chat_template.json")
    own = Tokenizer.load(bundled_model_dir)
    assert Tokenizer.load(both).render_chat(HI) == "<user>hi"
    assert Tokenizer.load(both).render_chat(HI, tools=tools) == own.render_chat(HI, tools=tools)
    assert "<user>" not in own.render_chat(HI, tools=tools)
    override = Tokenizer.load(both, chat_template="{{ messages[0].content }}!")
    assert override.render_chat(HI) == "hi!"
    for broken in ("{not json", json.dumps(["a list"]), json.dumps({"chat_template": 3})):
        (folder / "chat_template.json").write_text(broken)
        with pytest.raises(ValueError, match="chat_template"):
            Tokenizer.load(folder)


def test_tokenizer_never_imports_torch(bundled_model_dir: Path) -> None:
    """The API process imports engine/tokenizer.py; torch there would cost seconds and GBs."""
    code = f"""
import sys
from engine.tokenizer import Tokenizer
from engine.detokenizer import IncrementalDetokenizer
tok = Tokenizer.load({str(bundled_model_dir)!r})
prompt = tok.apply_chat_template([{{"role": "user", "content": "hi"}}])
detok = IncrementalDetokenizer(tok, prompt, stop=["x"])
detok.add(tok.encode("hello"))
detok.flush()
tok.token_bytes_repr(prompt[0])
leaked = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
assert not leaked, leaked[:5]
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_tool_call_arguments_json_cannot_read_are_passed_on_as_text() -> None:
    """Deep nesting makes json raise RecursionError, huge integers a plain ValueError:
    the arguments stay the client's string instead of failing the request with a 500."""
    for arguments in ("[" * 50_000, "9" * 5000, "{not json"):
        call = {"id": "c", "type": "function", "function": {"name": "f", "arguments": arguments}}
        (message,) = normalize_messages([{"role": "assistant", "tool_calls": [call]}])
        assert message["tool_calls"] == [call]
