"""Model cards: the JSON file that travels with each committed ``.onnx`` model.

A card says what the model computes (inputs and outputs with shapes and units), how to
prepare its inputs (normalisation constants, window length), what it was trained on (data,
seed, steps) and how well it did on held-out data, and pins the exact file by its sha256.
At run time :func:`verify_file` refuses a model whose bytes do not match its card, so a
retrained ``.onnx`` cannot be used with stale constants by accident.

No torch here: this module is imported by the runtime.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from models.errors import ModelCardMismatch, ModelError

CARD_SUFFIX = ".card.json"


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: ``shape`` uses ``None`` for a dynamic axis (the batch)."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str
    unit: str
    description: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorSpec:
        try:
            return cls(
                name=str(d["name"]),
                shape=tuple(None if s is None else int(s) for s in d["shape"]),
                dtype=str(d["dtype"]),
                unit=str(d.get("unit", "")),
                description=str(d.get("description", "")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"model card tensor entry {d!r} is malformed: {exc}") from exc


@dataclass
class ModelCard:
    """The contents of ``<model>.card.json``."""

    name: str
    task: str
    onnx_file: str
    sha256: str
    opset: int
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    window: int
    normalisation: dict[str, Any]
    training: dict[str, Any]
    metrics: dict[str, Any]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> str:
        d = asdict(self)
        d["inputs"] = [asdict(t) | {"shape": list(t.shape)} for t in self.inputs]
        d["outputs"] = [asdict(t) | {"shape": list(t.shape)} for t in self.outputs]
        return json.dumps(d, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelCard:
        required = ("name", "task", "onnx_file", "sha256", "opset", "inputs", "outputs",
                    "window", "normalisation", "training", "metrics")
        missing = [k for k in required if k not in d]
        if missing:
            raise ModelError(f"model card lacks keys {missing}")
        return cls(
            name=str(d["name"]),
            task=str(d["task"]),
            onnx_file=str(d["onnx_file"]),
            sha256=str(d["sha256"]),
            opset=int(d["opset"]),
            inputs=[TensorSpec.from_dict(t) for t in d["inputs"]],
            outputs=[TensorSpec.from_dict(t) for t in d["outputs"]],
            window=int(d["window"]),
            normalisation=dict(d["normalisation"]),
            training=dict(d["training"]),
            metrics=dict(d["metrics"]),
            extra=dict(d.get("extra", {})),
        )


def card_path(onnx_path: Path) -> Path:
    """``x/predictor.onnx`` -> ``x/predictor.card.json``."""
    return onnx_path.with_name(onnx_path.stem + CARD_SUFFIX)


def load_card(path: Path | str) -> ModelCard:
    """Read a card; a missing or malformed file raises :class:`ModelError` naming it."""
    p = Path(path)
    try:
        data = json.loads(p.read_text())
    except FileNotFoundError as exc:
        raise ModelError(f"model card {p} not found (train the model: gridtwin train)") from exc
    except json.JSONDecodeError as exc:
        raise ModelError(f"model card {p} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ModelError(f"model card {p} must hold a JSON object")
    return ModelCard.from_dict(data)


def save_card(card: ModelCard, path: Path | str) -> None:
    Path(path).write_text(card.to_json())


def sha256_file(path: Path | str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(card: ModelCard, onnx_path: Path | str) -> None:
    """Raise :class:`ModelCardMismatch` unless the file's sha256 is the card's."""
    p = Path(onnx_path)
    if not p.exists():
        raise ModelCardMismatch(f"model file {p} named by card {card.name!r} does not exist")
    digest = sha256_file(p)
    if digest != card.sha256:
        raise ModelCardMismatch(
            f"model file {p} has sha256 {digest[:16]}…, its card {card.name!r} pins "
            f"{card.sha256[:16]}…: the .onnx and .card.json do not belong together "
            "(retrain with `gridtwin train` to regenerate both)"
        )
