"""The predictor process: ``python -m models.serve --fd N [--model predictor] [--batch B]``.

Started by the gateway's quality stage (:class:`gateway.quality.predictor.PredictorProcess`,
a worker of ``gateway/workers.py``; restarted with back-off when it dies) so that
the measurement predictor's ONNX Runtime call (a few hundred µs per snapshot, the
largest single cost of the gateway's thread) runs on another core. Threads do not do
it: onnxruntime releases the GIL, but the ingest thread and a predictor thread then hand
the GIL back and forth on every datagram (measured at 1 kHz: a third of the frames not
read in time). A process shares nothing but one socket.

Protocol on the inherited AF_UNIX ``SOCK_SEQPACKET`` fd (one message per record):

* the process sends ``READY`` + ``<II`` (batch, window), ``models.runtime.READY_MSG``,
  once the session is bound and has run once (the gateway's READY handshake checks both);
* the gateway sends the float32 ``(batch, window, 1)`` normalised windows, C order, as
  one message of exactly ``4 * batch * window`` bytes;
* the process answers with the float32 ``(batch,)`` outputs, ``4 * batch`` bytes;
* an empty message (the gateway closed its end) or EOF ends the process.

A message of the wrong size is answered with ``ERROR`` + text and otherwise ignored.
Only onnxruntime and numpy are imported: never torch.
"""

from __future__ import annotations

import argparse
import signal
import socket
import sys

#: SCHED_FIFO priority when the gateway runs real-time (the gateway gives it to the child,
#: on the gateway's CPU, once it is READY; a parent whose policy is inherited by its
#: children has it lowered to this here): below the gateway's ingest and the estimator,
#: so a late prediction never delays reading frames or solving (the quality stage then
#: predicts itself), and above an emulator sharing the host (10)
RT_PRIORITY = 15
ERROR = b"E"


def serve(sock: socket.socket, model_name: str, batch: int, models_dir: str | None) -> int:
    from models.runtime import READY, READY_MSG, load_model

    bound = load_model(model_name, models_dir).bind(batch)
    inp = bound.input.data.cast("B")
    n_in = inp.nbytes
    out = bound.output
    bound()  # first run allocates: before READY, not on the first snapshot
    sock.send(READY_MSG.pack(READY, batch, int(bound.input.shape[1])))
    while True:
        # straight into the bound input; MSG_TRUNC returns the message's real length,
        # so a message of the wrong size is seen as such (and overwritten by the next)
        n = sock.recv_into(inp, n_in, socket.MSG_TRUNC)
        if n == 0:
            return 0
        if n != n_in:
            sock.send(ERROR + f"expected {n_in} bytes of windows, got {n}".encode())
            continue
        bound()
        sock.send(out.data)


def _below_the_gateway() -> None:
    """Real-time parent: take :data:`RT_PRIORITY` (see there); else leave it."""
    import contextlib
    import os

    with contextlib.suppress(OSError, AttributeError):
        if os.sched_getscheduler(0) & ~getattr(os, "SCHED_RESET_ON_FORK", 0) == \
                os.SCHED_FIFO and \
                os.sched_getparam(0).sched_priority > RT_PRIORITY:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(RT_PRIORITY))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m models.serve")
    p.add_argument("--fd", type=int, required=True, help="inherited SOCK_SEQPACKET fd")
    p.add_argument("--model", default="predictor", help="committed model name")
    p.add_argument("--models-dir", default=None, help="directory of <model>.onnx + card")
    p.add_argument("--batch", type=int, required=True, help="rows per request")
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the gateway stops us, not Ctrl-C
    _below_the_gateway()
    sock = socket.socket(fileno=args.fd)
    try:
        return serve(sock, args.model, args.batch, args.models_dir)
    except (BrokenPipeError, ConnectionResetError):
        return 0
    except Exception as exc:  # the gateway reads this in its log and goes on in-process
        print(f"predictor process: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
