"""ONNX Runtime inference for the committed models, behind a card check.

:class:`OnnxModel` opens ``<name>.onnx`` together with ``<name>.card.json``, refuses the
pair unless the file's sha256 matches the card and the session's input/output names,
ranks and fixed dimensions match the card's tensor specs, and then runs the model with a
single-threaded session (latency per call matters more than throughput here: one call per
snapshot with batch = channels).

Per-snapshot fast path: :meth:`OnnxModel.bind` returns a :class:`BoundModel` whose input
and output are preallocated numpy arrays bound to the session once (onnxruntime IO
binding): the caller writes the input in place and each call runs the graph with no
input dict, no output allocation and no copy (~10 µs less per call than
``InferenceSession.run`` for the predictor).

Only onnxruntime and numpy are imported; torch never is.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from models.card import ModelCard, TensorSpec, card_path, load_card, verify_file
from models.errors import ModelCardMismatch, ModelError

PREDICTOR = "predictor"  # measurement predictor (BiLSTM, one shared model for all channels)
PV = "pv_forecaster"  # PV forecaster (BiLSTM over weather windows)

#: ``python -m models.serve`` says it is ready: READY, batch, window (its module doc has
#: the whole protocol; here so that the gateway's side reads the same layout)
READY = b"R"
READY_MSG = struct.Struct("<cII")


def default_models_dir() -> Path:
    """The directory of the committed models: this package's own directory."""
    return Path(__file__).resolve().parent


def _ort_type(dtype: str) -> str:
    return {"float32": "tensor(float)", "float64": "tensor(double)",
            "int64": "tensor(int64)"}.get(dtype, dtype)


def _check_specs(kind: str, specs: list[TensorSpec], got: list[object], path: Path) -> None:
    names = [g.name for g in got]  # type: ignore[attr-defined]
    want = [s.name for s in specs]
    if names != want:
        raise ModelCardMismatch(f"{path}: {kind} names {names}, card says {want}")
    for spec, g in zip(specs, got, strict=True):
        shape = list(g.shape)  # type: ignore[attr-defined]
        if len(shape) != len(spec.shape):
            raise ModelCardMismatch(
                f"{path}: {kind} {spec.name!r} has rank {len(shape)}, card says "
                f"{len(spec.shape)} ({list(spec.shape)})"
            )
        for axis, (s_card, s_file) in enumerate(zip(spec.shape, shape, strict=True)):
            if s_card is not None and isinstance(s_file, int) and s_file != s_card:
                raise ModelCardMismatch(
                    f"{path}: {kind} {spec.name!r} axis {axis} is {s_file}, card says {s_card}"
                )
        gtype = g.type  # type: ignore[attr-defined]
        if gtype != _ort_type(spec.dtype):
            raise ModelCardMismatch(
                f"{path}: {kind} {spec.name!r} is {gtype}, card says {spec.dtype}"
            )


class OnnxModel:
    """A verified ONNX Runtime session for one committed model."""

    def __init__(self, onnx_path: Path | str, *, threads: int = 1) -> None:
        import onnxruntime as ort  # local: keeps `import models` light

        self.path = Path(onnx_path)
        self.card: ModelCard = load_card(card_path(self.path))
        verify_file(self.card, self.path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting worker threads: the gateway shares its cores with the estimator
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(self.path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise ModelError(f"onnxruntime cannot load {self.path}: {exc}") from exc
        _check_specs("input", self.card.inputs, self.session.get_inputs(), self.path)
        _check_specs("output", self.card.outputs, self.session.get_outputs(), self.path)
        self._in = self.card.inputs[0].name
        self._out = [o.name for o in self.card.outputs]

    def run(self, x: np.ndarray) -> np.ndarray:
        """Run on one input array (float32, the card's first input); returns the first output."""
        out = self.session.run(self._out, {self._in: x})
        return np.asarray(out[0])

    def bind(self, batch: int) -> BoundModel:
        """Preallocated, bound input and output buffers for a fixed ``batch`` (IO binding)."""
        return BoundModel(self, batch)


def _fixed_shape(spec: TensorSpec, batch: int, path: Path) -> tuple[int, ...]:
    dims = [batch if k == 0 and d is None else d for k, d in enumerate(spec.shape)]
    if any(d is None for d in dims):
        raise ModelError(f"{path}: {spec.name!r} has dynamic axes beyond the batch "
                         f"({list(spec.shape)}): cannot preallocate it")
    return tuple(int(d) for d in dims)  # type: ignore[arg-type]


class BoundModel:
    """One model with its first input and output bound to preallocated float32 arrays.

    Write the input into :attr:`input` (in place: ``bound.input[...] = x``), call, read
    :attr:`output` (the same array every call: copy it if it must outlive the next call).
    """

    def __init__(self, model: OnnxModel, batch: int) -> None:
        import onnxruntime as ort

        if len(model.card.inputs) != 1:
            raise ModelError(f"{model.path}: IO binding needs exactly one input")
        self.model = model
        self.batch = batch
        self.input = np.zeros(_fixed_shape(model.card.inputs[0], batch, model.path),
                              np.float32)
        self.output = np.zeros(_fixed_shape(model.card.outputs[0], batch, model.path),
                               np.float32)
        sess = model.session
        self._io = sess.io_binding()
        # the OrtValues wrap the numpy buffers (no copy): writes to self.input are seen
        self._in_val = ort.OrtValue.ortvalue_from_numpy(self.input)
        self._out_val = ort.OrtValue.ortvalue_from_numpy(self.output)
        self._io.bind_ortvalue_input(model._in, self._in_val)
        self._io.bind_ortvalue_output(model._out[0], self._out_val)
        self._ro = ort.RunOptions()
        # the C++ entry point of InferenceSession.run_with_iobinding (its Python wrapper
        # only adds WebGPU graph-capture bookkeeping); the public one where it is absent
        c_sess = getattr(sess, "_sess", None)
        c_io = getattr(self._io, "_iobinding", None)
        if c_sess is not None and c_io is not None and hasattr(c_sess, "run_with_iobinding"):
            self._run = lambda: c_sess.run_with_iobinding(c_io, self._ro)
        else:  # pragma: no cover - other onnxruntime versions
            self._run = lambda: sess.run_with_iobinding(self._io, self._ro)

    def __call__(self) -> np.ndarray:
        """Run on :attr:`input`; returns :attr:`output` (filled in place)."""
        self._run()
        return self.output


def load_model(name: str, models_dir: Path | str | None = None) -> OnnxModel:
    """Open ``<models_dir>/<name>.onnx`` (the committed models when ``models_dir`` is None)."""
    d = Path(models_dir) if models_dir is not None else default_models_dir()
    path = d / f"{name}.onnx"
    if not path.exists():
        raise ModelError(f"model {path} not found (train it: gridtwin train {name})")
    return OnnxModel(path)
