"""The scorer's inputs and output kept in device memory between batches (onnxruntime I/O
binding), and on CUDA optionally replayed as captured CUDA graphs.

A batch is padded to the next power of two of rows (at least MIN_ROWS), so a few fixed
shapes serve every batch size: each shape has its own device buffers, host staging arrays
(page-locked where the CUDA runtime lets us register them) and binding, made on first use.
The rows past the batch keep whatever an earlier batch left there (valid ad indices), and
their scores are dropped. With graphs, each shape is captured once after onnxruntime's
warm-up runs and then replayed: one launch instead of one per kernel.

One lock serialises the device work: the GPU runs one stream, and the buffers are shared.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import weakref

import numpy as np
import onnxruntime as ort

from adbid.world import intent_model

log = logging.getLogger(__name__)

MIN_ROWS = 16
_INPUTS = (("user", np.float32), ("context", np.float32), ("device", np.int64),
           ("cand_ad", np.int64))
_CUDART = ("libcudart.so.13", "libcudart.so.12", "libcudart.so")


def padded_rows(n: int) -> int:
    """The fixed shape a batch of n events runs in."""
    return max(MIN_ROWS, 1 << (max(n, 1) - 1).bit_length())


_PAGE = 4096


class _PageLocker:
    """cudaHostRegister through the CUDA runtime already loaded by onnxruntime; without one,
    staging arrays stay pageable (onnxruntime copies from those too, through a bounce)."""

    def __init__(self) -> None:
        self.lib = None
        for name in _CUDART:
            try:
                self.lib = ctypes.CDLL(name)
                break
            except OSError:
                continue

    def lock(self, block: np.ndarray) -> bool:
        """Page-lock a page-aligned block. A refusal is cleared from the runtime's last
        error, which onnxruntime would otherwise read as its own kernel's failure."""
        if self.lib is None:
            return False
        ok = self.lib.cudaHostRegister(ctypes.c_void_p(block.ctypes.data),
                                       ctypes.c_size_t(block.nbytes), 0) == 0
        if not ok:
            self.lib.cudaGetLastError()
        return ok

    def unlock(self, block: np.ndarray) -> None:
        """Before the block is freed: memory the allocator hands out again must not stay
        registered, or later copies from it fail."""
        if self.lib is not None:
            self.lib.cudaHostUnregister(ctypes.c_void_p(block.ctypes.data))


def _staging(shapes: dict[str, tuple[int, ...]]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """One page-aligned block holding each input's host array at a page boundary (two
    registrations must never share a page)."""
    sizes = {name: -(-int(np.prod(shapes[name])) * np.dtype(dt).itemsize // _PAGE) * _PAGE
             for name, dt in _INPUTS}
    raw = np.zeros(sum(sizes.values()) + _PAGE, np.uint8)
    start = -raw.ctypes.data % _PAGE
    block = raw[start:start + sum(sizes.values())]
    arrays, at = {}, 0
    for name, dt in _INPUTS:
        n = int(np.prod(shapes[name]))
        arrays[name] = block[at:at + n * np.dtype(dt).itemsize].view(dt).reshape(shapes[name])
        at += sizes[name]
    return block, arrays


class _Shape:
    """Buffers and binding of one padded shape."""

    def __init__(self, session: ort.InferenceSession, device: str, rows: int, dim: int,
                 k: int, locker: _PageLocker | None) -> None:
        shapes = {"user": (rows, dim), "context": (rows, dim), "device": (rows,),
                  "cand_ad": (rows, k)}
        self.block, self.host = _staging(shapes)
        self.locked = locker is not None and locker.lock(self.block)
        if self.locked:
            assert locker is not None
            weakref.finalize(self, locker.unlock, self.block)  # holds the block until then
        self.on_device = {name: ort.OrtValue.ortvalue_from_numpy(a, device, 0)
                          for name, a in self.host.items()}
        self.out = ort.OrtValue.ortvalue_from_shape_and_type((rows, k), np.float32, device, 0)
        self.binding = session.io_binding()
        for name, value in self.on_device.items():
            self.binding.bind_ortvalue_input(name, value)
        self.binding.bind_ortvalue_output(intent_model.OUTPUT, self.out)
        self.runs = 0


class DeviceIO:
    """score() through bound device buffers; `graphs` replays captured CUDA graphs (the
    session must have been made with the CUDA provider's enable_cuda_graph)."""

    def __init__(self, session: ort.InferenceSession, dim: int, device: str = "cuda",
                 graphs: bool = False) -> None:
        self.session, self.dim, self.device, self.graphs = session, dim, device, graphs
        self.shapes: dict[tuple[int, int], _Shape] = {}
        self.lock = threading.Lock()
        self.locker = _PageLocker() if device == "cuda" else None
        self._options: dict[tuple[int, int], ort.RunOptions] = {}

    def _shape(self, rows: int, k: int) -> _Shape:
        s = self.shapes.get((rows, k))
        if s is None:
            s = self.shapes[rows, k] = _Shape(self.session, self.device, rows, self.dim, k,
                                              self.locker)
            opts = ort.RunOptions()
            # Each shape its own graph; -1 runs without capturing.
            opts.add_run_config_entry("gpu_graph_id", str(len(self.shapes)) if self.graphs
                                      else "-1")
            self._options[rows, k] = opts
            log.info("scoring shape %dx%d bound on %s (page-locked staging: %s, CUDA graph: %s)",
                     rows, k, self.device, s.locked, self.graphs)
        return s

    def warm(self, k: int, max_rows: int, runs: int = 3) -> None:
        """Make every shape up to max_rows and run each a few times, so that onnxruntime's
        warm-up runs and the graph captures happen now, not in a served batch's time."""
        rows = MIN_ROWS
        while True:
            with self.lock:
                s = self._shape(rows, k)
                for _ in range(runs):
                    self.session.run_with_iobinding(s.binding, self._options[rows, k])
            if rows >= max_rows:
                break
            rows *= 2

    def score(self, user: np.ndarray, context: np.ndarray, device: np.ndarray,
              cand_ad: np.ndarray) -> np.ndarray:
        n, k = cand_ad.shape
        rows = padded_rows(n)
        with self.lock:
            s = self._shape(rows, k)
            for name, arr in (("user", user), ("context", context), ("device", device),
                              ("cand_ad", cand_ad)):
                s.host[name][:n] = arr
                s.on_device[name].update_inplace(s.host[name])
            try:
                self.session.run_with_iobinding(s.binding, self._options[rows, k])
            except Exception as exc:  # a capture onnxruntime cannot make: run uncaptured
                if not self.graphs:
                    raise
                log.warning("CUDA graph capture failed (%s); replaying none from now on", exc)
                self.graphs = False
                for opts in self._options.values():
                    opts.add_run_config_entry("gpu_graph_id", "-1")
                self.session.run_with_iobinding(s.binding, self._options[rows, k])
            s.runs += 1
            return s.out.numpy()[:n].copy()  # on the CPU numpy() is the bound buffer itself
