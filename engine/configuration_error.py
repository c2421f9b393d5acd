"""Errors that say start-up cannot succeed as configured, so retrying changes nothing.

A worker that meets one exits with `conveyor.child_process.CONFIGURATION_ERROR` and
`conveyor serve` stops instead of restarting it; any other failure (a hub that does not
answer, memory another process holds for now) is retried. Plain Python, no torch: the
supervisor and API processes import it.
"""

from __future__ import annotations


class ConfigurationError(ValueError):
    """A model, tokenizer, template or setting that cannot work as given."""


class MissingFileError(ConfigurationError, FileNotFoundError):
    """A file, folder or hub repository the configuration names is not there."""
