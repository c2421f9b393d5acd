"""`--config FILE`: vLLM's YAML file of command-line options.

Keys are the flags' long names without the dashes (`max-num-seqs: 64`, or
`max_num_seqs`); `model` names the model. The file's values become the
sub-command's defaults, so a flag on the command line still wins, as in vLLM.
Each value goes through its flag's own type and choices; an unknown key is an
error naming it, never silently dropped.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml

CONFIG_FLAG = "--config"


class ConfigFileError(ValueError):
    """The file cannot be used; the message names the file and the key."""


def config_path(argv: list[str]) -> str | None:
    """The file named by `--config FILE` or `--config=FILE`, if any."""
    for i, token in enumerate(argv):
        if token == CONFIG_FLAG:
            if i + 1 >= len(argv):
                raise ConfigFileError(f"{CONFIG_FLAG} needs a file")
            return argv[i + 1]
        if token.startswith(CONFIG_FLAG + "="):
            return token.split("=", 1)[1]
    return None


def _actions(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Each long option (and `model`) of `parser`, by its name without dashes."""
    found: dict[str, argparse.Action] = {}
    for action in parser._actions:  # argparse keeps no public list of them
        if not action.option_strings:
            found[action.dest] = action  # the positional `model`
        for option in action.option_strings:
            # `--no-x` is `x: false` in a file (it would mean the opposite of its value).
            negative = isinstance(action, argparse.BooleanOptionalAction) and option.startswith(
                "--no-"
            )
            if option.startswith("--") and not negative:
                found[option[2:]] = action
    return found


def _as_text(value: Any) -> str:
    """A YAML mapping or list for a JSON flag (--speculative-config ...) becomes its JSON."""
    return json.dumps(value) if isinstance(value, dict | list) else str(value)


def _convert(key: str, action: argparse.Action, value: Any, source: str) -> Any:
    def checked(item: Any) -> Any:
        if action.type is not None and callable(action.type):
            try:
                item = action.type(item if isinstance(item, str) else _as_text(item))
            except (TypeError, ValueError, argparse.ArgumentTypeError) as exc:
                raise ConfigFileError(f"{source}: {key}: {exc}") from None
        elif not isinstance(item, bool):
            item = _as_text(item)
        if action.choices is not None and item not in action.choices:
            choices = ", ".join(map(str, action.choices))
            raise ConfigFileError(f"{source}: {key}: {item!r} is not one of {choices}")
        return item

    if action.nargs == 0:  # a switch: store_true, or --x / --no-x
        if not isinstance(value, bool):
            raise ConfigFileError(f"{source}: {key}: expected true or false, got {value!r}")
        return value
    if action.nargs in ("+", "*"):
        return [checked(item) for item in (value if isinstance(value, list) else [value])]
    if isinstance(value, list):
        if action.type is None:  # a flag of one value; JSON flags take objects
            raise ConfigFileError(f"{source}: {key}: takes one value, got a list")
        return checked(json.dumps(value))  # --allowed-origins takes a JSON list
    return checked(value)


def apply_config_file(parser: argparse.ArgumentParser, path: str) -> None:
    """Make the file's values `parser`'s defaults (the command line still wins)."""
    source = f"{CONFIG_FLAG} {path}"
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigFileError(f"{source}: {exc}") from None
    if data is None:
        return
    if not isinstance(data, dict):
        raise ConfigFileError(f"{source}: expected a mapping of option: value")
    actions = _actions(parser)
    defaults: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("_", "-")
        action = actions.get(key) or actions.get(str(raw_key))
        if action is None or key in ("help", "config"):
            raise ConfigFileError(f"{source}: unknown option {raw_key!r}")
        if value is None:
            continue  # `key:` or `key: null` leaves the default
        defaults[action.dest] = _convert(key, action, value, source)
    parser.set_defaults(**defaults)
