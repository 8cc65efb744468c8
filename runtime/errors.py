"""Coded errors: one base class, one subclass per stage.

Every error a customer or operator can trigger is a ``StoreclerkError`` with a stable ``code`` (for logs,
metrics and the HTTP API) and a message that says what is wrong and, where possible, how to fix it.
Wrap library exceptions with ``raise ... from exc`` so the original stays in the traceback for developers,
while the CLI shows only the message.
"""

from __future__ import annotations


class StoreclerkError(Exception):
    """Base class. ``code`` is a short, stable, machine-readable identifier."""

    code = "error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return self.message


class ConfigError(StoreclerkError):
    code = "config"


class BundleError(StoreclerkError):
    """A model bundle is missing, tampered with, truncated, or not loadable."""

    code = "bundle"


class InferenceError(StoreclerkError):
    """A runner was given inputs that do not match its model, or the backend failed."""

    code = "inference"


class DataError(StoreclerkError):
    """Training/evaluation data is unreadable or unusable (missing column, empty labels, one class...)."""

    code = "data"


class ExportError(StoreclerkError):
    """The export stage could not produce a bundle (conversion failed, parity check failed...)."""

    code = "export"


class InputError(StoreclerkError):
    """Customer or API input that cannot be used as given."""

    code = "input"
