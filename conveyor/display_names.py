"""The rule for names operators give projects and keys, shared by the admin API and the CLI.

Names show up in lists, usage reports and logs: no control characters (a NUL
cannot even be stored on PostgreSQL) and no surrounding spaces, which would
make ' acme' and 'acme' two projects nobody can tell apart.
"""

from __future__ import annotations

import unicodedata


def key_name(name: str) -> str:
    """`name` trimmed; ValueError if it holds control characters. Keys may be unnamed."""
    if any(unicodedata.category(c) == "Cc" for c in name):
        raise ValueError("must not contain control characters (newlines, tabs, NUL)")
    return name.strip()


def project_name(name: str) -> str:
    """As `key_name`, and not empty: projects are found by name."""
    name = key_name(name)
    if not name:
        raise ValueError("must not be empty or only spaces")
    return name
