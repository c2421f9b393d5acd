"""How every benchmark reports: one JSON line per result, to stdout and optionally a file."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class JsonLines:
    """Prints each result as one JSON line and, if asked, appends it to a file."""

    path: Path | None
    lines: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, line: dict[str, Any]) -> None:
        self.lines.append(line)
        text = json.dumps(line)
        print(text, flush=True)
        if self.path is not None:
            with self.path.open("a") as handle:
                handle.write(text + "\n")


def rounded(value: float | None, digits: int = 3) -> float | None:
    """A figure as reported: rounded, or None where it was not measured."""
    return None if value is None else round(value, digits)
