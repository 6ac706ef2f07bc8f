"""Network architectures (torch; imported by the training code only, never at run time).

* :class:`RecurrentRegressor` — LSTM or bidirectional LSTM over a window, the final hidden
  states of both directions -> a linear head. The measurement predictor (BiLSTM, input
  ``(B, 9, 1)``, output ``(B, 1)``) and the PV forecaster (BiLSTM, input ``(B, 10, 6)``,
  output ``(B, 1)``) are both this class; the LSTM baseline is the unidirectional one.
* :class:`MlpRegressor` — the BP (back-propagation MLP) / ANN baselines on the flattened window.
* :class:`FusedBiLstm` — the export form of a trained one-layer BiLSTM: the same maths,
  unrolled over the fixed window with both directions fused into one gate matmul per step,
  so ONNX Runtime runs ~90 small kernels instead of its generic LSTM operator (which loops
  over the batch and is 2-3x slower at batch = 124 channels, seq = 9, hidden = 8).
  It matches ``nn.LSTM`` to float32 rounding (checked at export).
"""

from __future__ import annotations

import torch
from torch import nn


class RecurrentRegressor(nn.Module):
    """(B, L, F) -> (B, out): [bi]LSTM, final hidden state(s) -> linear head."""

    def __init__(self, n_in: int, hidden: int, *, bidirectional: bool, n_out: int = 1,
                 head_hidden: int = 0) -> None:
        super().__init__()
        self.n_in = n_in
        self.hidden = hidden
        self.bidirectional = bidirectional
        self.lstm = nn.LSTM(n_in, hidden, batch_first=True, bidirectional=bidirectional)
        width = hidden * (2 if bidirectional else 1)
        if head_hidden:
            self.head: nn.Module = nn.Sequential(
                nn.Linear(width, head_hidden), nn.Tanh(), nn.Linear(head_hidden, n_out))
        else:
            self.head = nn.Linear(width, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.lstm(x)
        # h: (directions, B, H); forward final state and backward final state (at t = 0)
        feat = torch.cat([h[0], h[1]], dim=1) if self.bidirectional else h[0]
        return self.head(feat)


class MlpRegressor(nn.Module):
    """(B, L, F) -> (B, out): the BP neural network baseline (flattened window)."""

    def __init__(self, n_in: int, length: int, hidden: int, *, n_out: int = 1) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(), nn.Linear(n_in * length, hidden), nn.Tanh(),
            nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FusedBiLstm(nn.Module):
    """Export form of a one-layer bidirectional :class:`RecurrentRegressor`.

    Per step t (both directions at once, state h = [h_fwd, h_bwd], width 2H)::

        z_t = [x_t, x_{L-1-t}] W + b + h_{t-1} U      # gates, fused layout [i f o | g]
        i, f, o = sigmoid(z_ifo);  g = tanh(z_g)
        c_t = f * c_{t-1} + i * g
        h_t = o * tanh(c_t)

    W and U are block matrices built from ``weight_ih/hh_l0`` and their ``_reverse``
    twins; b = b_ih + b_hh. The head reads h_L = [h_fwd(L-1), h_bwd(0)], as nn.LSTM's h_n.
    """

    def __init__(self, model: RecurrentRegressor, length: int) -> None:
        super().__init__()
        if not model.bidirectional:
            raise ValueError("FusedBiLstm needs a bidirectional model")
        lstm: nn.LSTM = model.lstm
        h = lstm.hidden_size
        f = lstm.input_size
        self.h = h
        self.length = length
        order = (0, 1, 3, 2)  # fused gate blocks i, f, o, g from torch's i, f, g, o
        w = torch.zeros(2 * f, 8 * h)
        u = torch.zeros(2 * h, 8 * h)
        b = torch.zeros(8 * h)
        p = {k: v.detach() for k, v in lstm.named_parameters()}
        with torch.no_grad():
            wf, wb = p["weight_ih_l0"], p["weight_ih_l0_reverse"]
            uf, ub = p["weight_hh_l0"], p["weight_hh_l0_reverse"]
            bf = p["bias_ih_l0"] + p["bias_hh_l0"]
            bb = p["bias_ih_l0_reverse"] + p["bias_hh_l0_reverse"]
            for k, g in enumerate(order):
                cf = slice(2 * k * h, (2 * k + 1) * h)
                cb = slice((2 * k + 1) * h, (2 * k + 2) * h)
                r = slice(g * h, (g + 1) * h)
                w[:f, cf] = wf[r].T
                w[f:, cb] = wb[r].T
                u[:h, cf] = uf[r].T
                u[h:, cb] = ub[r].T
                b[cf] = bf[r]
                b[cb] = bb[r]
        self.w: torch.Tensor
        self.u: torch.Tensor
        self.b: torch.Tensor
        self.register_buffer("w", w)
        self.register_buffer("u", u)
        self.register_buffer("b", b)
        self.head = model.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h2 = 2 * self.h
        xx = torch.cat([x, torch.flip(x, [1])], 2).transpose(0, 1)  # (L, B, 2F)
        pre = torch.matmul(xx, self.w) + self.b  # (L, B, 8H): input part of every gate
        steps = torch.split(pre, 1, dim=0)
        hs: torch.Tensor | None = None
        cs: torch.Tensor | None = None
        for t in range(self.length):
            z = steps[t][0]
            if hs is not None:
                z = torch.addmm(z, hs, self.u)
            zs, zg = torch.split(z, [3 * h2, h2], dim=1)
            s = torch.sigmoid(zs)
            g = torch.tanh(zg)
            i, f, o = torch.split(s, [h2, h2, h2], dim=1)
            cs = i * g if cs is None else f * cs + i * g
            hs = o * torch.tanh(cs)
        assert hs is not None
        return self.head(hs)
