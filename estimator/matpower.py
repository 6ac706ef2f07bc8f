"""MATPOWER case files as MATPOWER itself reads them: the matrices, then the code after them.

A case file is a MATLAB function. Most hold plain matrices in per unit and MW, but some
(MATPOWER's own ``case33bw.m``, ``case69.m``, ...) keep the source data's units (ohms, kW)
in the matrices and convert them in code that follows. Reading only the matrices would
give impedances in ohms and loads in kW silently, so this reader evaluates the common
post-processing idioms and refuses anything else, naming the line:

* ``[PQ, PV, ..., BASE_KV, ...] = idx_bus;`` (and ``idx_brch``, ``idx_gen``): the column
  names MATPOWER defines, bound by position;
* ``NAME = expression;`` with numbers, ``+ - * / ^``, parentheses, earlier names,
  ``mpc.baseMVA`` and matrix elements such as ``mpc.bus(1, BASE_KV)``;
* ``mpc.bus(:, [PD QD]) = mpc.bus(:, [PD QD]) / 1e3;``: column (or element) updates of
  ``bus``, ``gen`` and ``branch``.

The fix for a refused file is MATPOWER's ``savecase``, which writes the evaluated case as
plain matrices.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np

from estimator.errors import NetworkError

__all__ = ["evaluate"]

MATRICES = ("bus", "gen", "branch")

#: the outputs of MATPOWER's idx_bus / idx_brch / idx_gen, in output order (1-based columns)
IDX = {
    "idx_bus": (1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17),
    "idx_brch": (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 14, 15, 16, 17, 18, 19, 12, 13, 20, 21),
    "idx_gen": (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 22, 23, 24, 25, 11, 12, 13, 14, 15, 16, 17,
                18, 19, 20, 21),
}

_TOKEN = re.compile(r"\s*(?:(\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)"
                    r"|(mpc\.\w+|[A-Za-z_]\w*)|(\.\*|\./|\.\^|[-+*/^(),:\[\]]))")
_MATRIX = re.compile(r"^mpc\.(\w+)\s*=\s*\[(.*)\]$", re.S)
_SKIP = re.compile(r"^(function\b.*|end|return|mpc\.\w+\s*=\s*(\{.*\}|'[^']*'))$", re.S)
_IDX = re.compile(r"^\[([\w\s,]+)\]\s*=\s*(idx_bus|idx_brch|idx_gen)$")
_ASSIGN = re.compile(r"^([A-Za-z_]\w*)\s*=\s*(.+)$", re.S)
_UPDATE = re.compile(r"^mpc\.(bus|gen|branch)\s*\((.+)\)\s*=\s*(.+)$", re.S)


class Refused(Exception):
    """A statement outside the idioms (internal; reported as NetworkError with its line)."""


def strip_comments(text: str) -> str:
    """Drop ``%`` comments and join ``...`` continuation lines (line count kept)."""
    out = []
    for line in text.splitlines():
        k = line.find("%")
        out.append(line if k < 0 else line[:k])
    joined = "\n".join(out)
    # a continuation joins the next line; keep a newline-free marker so rows stay counted
    return re.sub(r"\.\.\.[^\n]*\n", " \r", joined)


def statements(clean: str) -> list[tuple[int, str]]:
    """(1-based line, text) of each statement: ``;`` or a newline outside brackets ends one."""
    out: list[tuple[int, str]] = []
    depth = 0
    line = start_line = 1
    buf: list[str] = []
    for ch in clean:
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        if depth == 0 and ch in ";\n":
            text = "".join(buf).replace("\r", " ").strip()
            if text:
                out.append((start_line, text))
            buf = []
        elif buf or not ch.isspace():
            if not buf:
                start_line = line
            buf.append(ch)
        if ch in "\n\r":
            line += 1
    text = "".join(buf).replace("\r", " ").strip()
    if text:
        out.append((start_line, text))
    return out


def evaluate(text: str, name: str, read_matrix: Callable[[str, str], np.ndarray]
             ) -> dict[str, Any]:
    """``baseMVA`` and the ``bus``, ``gen``, ``branch`` matrices after the file's code ran.

    ``read_matrix(body, field)`` turns the text between ``[`` and ``]`` into an array.
    """
    out: dict[str, Any] = {}
    env: dict[str, Any] = {}
    for line, stmt in statements(strip_comments(text)):
        try:
            _statement(stmt, out, env, name, read_matrix)
        except Refused as exc:
            raise NetworkError(
                f"{name}, line {line}: cannot evaluate '{_short(stmt)}' ({exc}); the loader "
                "understands plain matrices and unit conversions of bus/gen/branch columns: "
                f"save the case with MATPOWER's savecase (savecase('{name}_pu.m', "
                f"loadcase('{name}'))) and load that file") from None
    return out


def _short(stmt: str) -> str:
    s = " ".join(stmt.split())
    return s if len(s) <= 70 else s[:67] + "..."


def _statement(stmt: str, out: dict[str, Any], env: dict[str, Any], name: str,
               read_matrix: Callable[[str, str], np.ndarray]) -> None:
    if _SKIP.match(stmt):
        return
    m = _MATRIX.match(stmt)
    if m:
        if m[1] in MATRICES:
            out[m[1]] = read_matrix(m[2], m[1])
        return
    m = _IDX.match(stmt)
    if m:
        names = [n.strip() for n in m[1].replace(",", " ").split()]
        env.update({n: float(v) for n, v in zip(names, IDX[m[2]], strict=False)})
        return
    m = _UPDATE.match(stmt)
    if m:
        _update(m[1], m[2], m[3], out, env)
        return
    m = re.match(r"^mpc\.baseMVA\s*=\s*(.+)$", stmt, re.S)
    if m:
        out["baseMVA"] = float(_scalar(_Expr(m[1], out, env).parse()))
        return
    m = _ASSIGN.match(stmt)
    if m:
        env[m[1]] = _Expr(m[2], out, env).parse()
        return
    raise Refused("not an assignment the loader evaluates")


def _scalar(v: Any) -> float:
    arr = np.asarray(v, float)
    if arr.size != 1:
        raise Refused("expected a number")
    return float(arr.reshape(()))


def _update(field: str, index: str, rhs: str, out: dict[str, Any],
            env: dict[str, Any]) -> None:
    if field not in out:
        raise Refused(f"mpc.{field} is used before it is defined")
    mat = np.asarray(out[field], float)
    rows, cols = _Expr(index, out, env).subscripts(mat.shape)
    value = np.asarray(_Expr(rhs, out, env).parse(), float)
    try:
        mat[np.ix_(rows, cols)] = value
    except ValueError as exc:
        raise Refused(f"shapes do not match: {exc}") from None
    out[field] = mat


class _Expr:
    """A recursive-descent reader of one MATLAB arithmetic expression."""

    def __init__(self, text: str, out: dict[str, Any], env: dict[str, Any]) -> None:
        self.toks = self._tokens(text)
        self.pos = 0
        self.out = out
        self.env = env

    @staticmethod
    def _tokens(text: str) -> list[str]:
        toks: list[str] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise Refused(f"unexpected {text[pos:].strip()[:10]!r}")
            toks.append(next(g for g in m.groups() if g is not None))
            pos = m.end()
            while pos < len(text) and text[pos].isspace():
                pos += 1
        return toks

    def peek(self) -> str | None:
        return self.toks[self.pos] if self.pos < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise Refused(f"expected {want or 'more'}, got {tok!r}")
        self.pos += 1
        return tok

    def parse(self) -> Any:
        v = self.expr()
        if self.peek() is not None:
            raise Refused(f"unexpected {self.peek()!r}")
        return v

    def expr(self) -> Any:
        v = self.term()
        while self.peek() in ("+", "-"):
            op = self.take()
            w = self.term()
            v = np.add(v, w) if op == "+" else np.subtract(v, w)
        return v

    def term(self) -> Any:
        v = self.unary()
        while self.peek() in ("*", "/", ".*", "./"):
            op = self.take()
            w = self.unary()
            if op in ("*", ".*"):
                if op == "*" and np.ndim(v) and np.ndim(w):
                    raise Refused("matrix product")
                v = np.multiply(v, w)
            else:
                if op == "/" and np.ndim(w):
                    raise Refused("matrix division")
                v = np.divide(v, w)
        return v

    def unary(self) -> Any:
        if self.peek() in ("-", "+"):
            op = self.take()
            v = self.unary()
            return np.negative(v) if op == "-" else v
        return self.power()

    def power(self) -> Any:
        v = self.primary()
        while self.peek() in ("^", ".^"):
            op = self.take()
            w = self.primary()
            if op == "^" and np.ndim(v):
                raise Refused("matrix power")
            v = np.power(v, w)
        return v

    def primary(self) -> Any:
        tok = self.take()
        if tok == "(":
            v = self.expr()
            self.take(")")
            return v
        if tok == "[":
            return self.vector()
        if tok[0].isdigit() or tok[0] == ".":
            return float(tok)
        if tok.startswith("mpc."):
            return self.field(tok[4:])
        if tok in self.env:
            return self.env[tok]
        raise Refused(f"unknown name {tok!r}")

    def vector(self) -> Any:
        items: list[float] = []
        while self.peek() != "]":
            items.extend(np.ravel(np.asarray(self.expr(), float)).tolist())
            if self.peek() == ",":
                self.take()
        self.take("]")
        return np.asarray(items)

    def field(self, name: str) -> Any:
        if name not in self.out:
            raise Refused(f"mpc.{name} is not defined (or not read by the loader)")
        val = self.out[name]
        if self.peek() != "(":
            return val
        self.take("(")
        mat = np.asarray(val, float)
        rows, cols = self.subscripts(mat.shape, inner=True)
        self.take(")")
        return mat[np.ix_(rows, cols)].squeeze()

    def subscripts(self, shape: tuple[int, ...], inner: bool = False
                   ) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, cols)`` 0-based index arrays of ``r, c`` (``:`` for all)."""
        if len(shape) != 2:
            raise Refused("indexing a matrix that is not 2-D")
        rows = self.subscript(shape[0])
        self.take(",")
        cols = self.subscript(shape[1])
        if not inner and self.peek() is not None:
            raise Refused(f"unexpected {self.peek()!r}")
        return rows, cols

    def subscript(self, size: int) -> np.ndarray:
        if self.peek() == ":":
            self.take()
            return np.arange(size)
        idx = np.ravel(np.asarray(self.expr(), float))
        if idx.size == 0 or np.any(idx != np.round(idx)) or np.any(idx < 1) or \
                np.any(idx > size):
            raise Refused(f"index {idx.tolist()} out of 1..{size}")
        return idx.astype(np.int64) - 1
