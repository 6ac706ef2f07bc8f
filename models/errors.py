"""Exception root of the models package."""

from __future__ import annotations


class ModelError(Exception):
    """Root of every error raised on purpose by ``models``."""


class ModelCardMismatch(ModelError):
    """The ONNX file does not match its model card (sha256, inputs or outputs)."""


class MissingExtra(ModelError):
    """An optional library is not installed; the message names the extra that installs it."""
