"""One exception tree for the whole project.

Each boundary maps these once: the CLI prints one line and exits with code 2, the API answers a
4xx with a JSON ``{"code", "detail"}``, the worker stores ``code`` and ``message`` on the job row.
"""

from __future__ import annotations


class AutopaintError(Exception):
    """Base class. ``code`` is a stable machine-readable identifier (snake_case)."""

    code: str = "error"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message

    def __str__(self) -> str:  # one line, always
        return " ".join(self.message.split())


class InvalidInput(AutopaintError):
    """Untrusted input rejected (bad file, bad parameters, inconsistent PET/CT pair...)."""

    code = "invalid_input"


class ModelError(AutopaintError):
    """A model could not be found, loaded or does not match the request (modality, size)."""

    code = "model_error"


class Cancelled(AutopaintError):
    """A job was cancelled by its owner; raised at a stage boundary."""

    code = "cancelled"
