# Stub for the compiled list-by-list IVF search (ext/listscan.pyx).
import numpy as np

# queries float32[B, D]; probes int64[B, P]; vectors float32[N, D] in list order;
# list_start int64[L + 1]; ids int64[N] -> (scores float32[B, k], ids int64[B, k])
def search(queries: np.ndarray, probes: np.ndarray, vectors: np.ndarray,
           list_start: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...
