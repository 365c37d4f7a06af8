# Stub for the compiled list-by-list IVF search (ext/listscan.pyx).
import numpy as np

def block_kernel_usable() -> bool: ...  # AVX2 and FMA here: the blocked kernel runs

# vectors float32[N, D] in list order; list_start int64[L + 1]
# -> (blocks float32[NB, D * 8], block_start int64[L + 1])
def to_blocks(vectors: np.ndarray, list_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

# queries float32[B, D]; probes int64[B, P]; vectors float32[N, D] in list order (or
# [0, D] with blocks); list_start int64[L + 1]; ids int64[N]; blocks, block_start from
# to_blocks -> (scores float32[B, k], ids int64[B, k])
def search(queries: np.ndarray, probes: np.ndarray, vectors: np.ndarray,
           list_start: np.ndarray, ids: np.ndarray, k: int, blocks: np.ndarray | None = None,
           block_start: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]: ...
