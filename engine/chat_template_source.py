"""vLLM's --chat-template value: a file to read, or the template itself.

Plain Python (no transformers): `conveyor serve` checks the flag before it starts
anything, so a missing file is one line at start-up, not a worker that keeps failing.
"""

from __future__ import annotations

from pathlib import Path

from engine.configuration_error import MissingFileError

# A literal template has Jinja's braces or several lines; a file name has neither
# (vLLM's rule).
_JINJA_CHARS = "{}\n"


def read_chat_template(value: str | Path) -> str:
    """The template a --chat-template value names: a readable file's text, else the
    value itself if it reads as a template; a path to nothing is a MissingFileError."""
    path = Path(value)
    try:
        path = path.expanduser()
        is_file = path.is_file()
    except (OSError, ValueError, RuntimeError):  # a literal template is no file name
        is_file = False
    if is_file:
        try:
            return path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise MissingFileError(f"--chat-template {value}: cannot read it: {exc}") from exc
    if isinstance(value, str) and any(char in value for char in _JINJA_CHARS):
        return value
    raise MissingFileError(
        f"--chat-template {str(value)!r} looks like a file path, but no such file exists"
    )
