# Stub for the compiled user-id table (ext/idtable.pyx).
from typing import TypeVar

import numpy as np
from typing_extensions import disjoint_base

_D = TypeVar("_D")

@disjoint_base  # a cdef class: no multiple inheritance with another one
class IdTable:
    width: int  # Py_ssize_t; code points per id in the world's '<U' array
    size: int  # Py_ssize_t; ids held (those meaning "no user" left out)
    duplicates: int  # Py_ssize_t; ids met again after their first row
    def __new__(cls, ids: np.ndarray) -> IdTable: ...  # a numpy '<U' array
    def rows_of(self, user_ids: list[str], unknown: int) -> np.ndarray: ...  # int64[B]
    def get(self, user_id: str, default: _D = ...) -> int | _D: ...
    def __len__(self) -> int: ...
    def __contains__(self, user_id: str, /) -> bool: ...

def user_keys(user_ids: list[str]) -> np.ndarray: ...  # uint64[B], FNV-1a over code points
