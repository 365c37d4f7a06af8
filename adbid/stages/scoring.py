"""Scoring stage: onnxruntime P(intent) for every (event, candidate) pair.

The CUDA execution provider is used when this onnxruntime build offers it and
a GPU answers; else the CPU one. onnxruntime-gpu falls back to the CPU
silently, so the provider that actually runs is read back from the session,
logged, and `require_gpu` refuses to start on the fallback. On CUDA the inputs and
output stay bound in device memory between batches (`gpu_io`, see device_io).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from adbid.stages.device_io import DeviceIO
from adbid.world import intent_model

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
_ONNX_TYPES = {"user": "tensor(float)", "context": "tensor(float)", "device": "tensor(int64)",
               "cand_ad": "tensor(int64)"}


class ModelError(ValueError):
    """The model does not have the signature adbid needs."""


class GpuUnavailableError(RuntimeError):
    """require_gpu was set and the CUDA provider is not what runs."""


def choose_providers(available: list[str], use_gpu: bool) -> list[str]:
    """Providers to ask onnxruntime for, best first."""
    return [CUDA, CPU] if use_gpu and CUDA in available else [CPU]


def check_signature(session: ort.InferenceSession, model_path: Path, dim: int, n_ads: int) -> None:
    """Raise ModelError unless the model takes adbid's inputs at this dimension and ad count."""
    inputs = {i.name: i for i in session.get_inputs()}
    if set(inputs) != set(_ONNX_TYPES):
        raise ModelError(f"model inputs {sorted(inputs)}, expected {sorted(_ONNX_TYPES)}")
    for name, want in _ONNX_TYPES.items():
        if inputs[name].type != want:
            raise ModelError(f"model input {name} is {inputs[name].type}, expected {want}")
    for name in ("user", "context"):
        last = inputs[name].shape[-1]
        if last != dim:
            raise ModelError(f"model input {name} has dimension {last}, world has {dim}")
    outputs = [o.name for o in session.get_outputs()]
    if outputs != [intent_model.OUTPUT]:
        raise ModelError(f"model outputs {outputs}, expected [{intent_model.OUTPUT!r}]")
    tables = [t for t in onnx.load(str(model_path)).graph.initializer
              if t.name == intent_model.AD_TABLE]
    if not tables or tuple(tables[0].dims) != (n_ads, dim):
        got = tuple(tables[0].dims) if tables else None
        raise ModelError(f"model ad table is {got}, index has ({n_ads}, {dim})")


class Scorer:
    def __init__(self, model_path: Path, dim: int, n_ads: int, intra_op_threads: int = 1,
                 spinning: bool = False, use_gpu: bool = True, require_gpu: bool = False,
                 gpu_io: str = "graph", warm: tuple[int, int] | None = None) -> None:
        """`warm`: (candidates per event, largest batch): on CUDA with device I/O, every
        padded shape up to that batch is made and run (graphs captured) before serving."""
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = intra_op_threads
        opts.inter_op_num_threads = 1
        opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
        if intra_op_threads > 1:
            # onnxruntime's own pool threads flush subnormal floats to zero, as the server's
            # native threads do (adbid._fpmode; 43-52x on Intel for the demo model). The
            # thread that creates the process's first session is flushed too: here a loader
            # thread (asyncio.to_thread), never the event loop.
            opts.add_session_config_entry("session.set_denormal_as_zero", "1")
        opts.log_severity_level = 3
        self.available_providers = ort.get_available_providers()
        requested = choose_providers(self.available_providers, use_gpu or require_gpu)
        if CUDA in requested and hasattr(ort, "preload_dlls"):
            # CUDA, cuBLAS and cuDNN from their pip wheels (`make serve GPU=1` installs
            # them); a library it cannot find is left to the system's search path.
            try:
                ort.preload_dlls()
            except Exception as exc:
                log.warning("onnxruntime could not preload the CUDA libraries: %s", exc)
        self.session = self._session(model_path, opts, requested, gpu_io)
        self.provider = self.session.get_providers()[0]
        self.gpu_io = gpu_io if self.provider == CUDA else "plain"
        if self.gpu_io == "graph" and not self._graphs:
            self.gpu_io = "bind"
        self.io = DeviceIO(self.session, dim, "cuda", graphs=self.gpu_io == "graph") \
            if self.gpu_io != "plain" else None
        self.intra_op_threads = intra_op_threads
        if require_gpu and self.provider != CUDA:
            raise GpuUnavailableError(
                f"--require-gpu: onnxruntime runs on {self.provider} (available: "
                f"{', '.join(self.available_providers)}); install onnxruntime-gpu "
                "(make serve GPU=1) on a machine with a working CUDA driver")
        check_signature(self.session, model_path, dim, n_ads)
        if self.io is not None and warm is not None:
            self.io.warm(*warm)
        log.info("scoring with %s (requested %s; available %s), intra-op threads %d, spinning %s"
                 ", device I/O %s", self.provider, requested, self.available_providers,
                 intra_op_threads, spinning, self.gpu_io)

    def _session(self, model_path: Path, opts: ort.SessionOptions, requested: list[str],
                 gpu_io: str) -> ort.InferenceSession:
        """With gpu_io 'graph' on CUDA, a session that may capture CUDA graphs; onnxruntime
        refuses one when part of the model would run on the CPU, and then a plain one."""
        self._graphs = False
        if CUDA in requested and gpu_io == "graph":
            try:
                s = ort.InferenceSession(str(model_path), sess_options=opts, providers=[
                    (CUDA, {"enable_cuda_graph": "1"}), CPU])
                self._graphs = s.get_providers()[0] == CUDA
                return s
            except Exception as exc:  # onnxruntime raises its own Fail/RuntimeException
                log.warning("CUDA graphs refused for this model (%s); binding buffers only",
                            exc)
        return ort.InferenceSession(str(model_path), sess_options=opts, providers=requested)

    def score(self, user: np.ndarray, context: np.ndarray, device: np.ndarray,
              cand_ad: np.ndarray) -> np.ndarray:
        """user, context float32[B, D]; device int64[B]; cand_ad int64[B, K] -> float32[B, K]."""
        if len(cand_ad) == 0:
            return np.empty(cand_ad.shape, dtype=np.float32)
        if self.io is not None:
            return self.io.score(user, context, device, cand_ad)
        return self.session.run([intent_model.OUTPUT], {
            "user": user, "context": context, "device": device, "cand_ad": cand_ad})[0]
