# Stub for the compiled wire codec (ext/wire.pyx): columnar BidRequests read from their
# bytes, columnar BidResponses written as bytes. The real Cython types are in the comments.
import numpy as np
import numpy.typing as npt

# message name -> field name -> field number, for every field the codec knows.
FIELDS: dict[str, dict[str, int]]
STRING_FIELDS: dict[int, str]  # EventColumns field number -> string column
NUMBER_FIELDS: dict[int, str]  # EventColumns field number -> number column

def column_kinds() -> list[tuple[int, int]]: ...  # (kind, width) per field number

def read_columns(
    raw: bytes,
) -> tuple[str, int, dict[str, list[str] | npt.NDArray[np.int64]], dict[str, int]] | None: ...
# (batch_id, deadline_ms, columns, longest) of a columnar request; None: not one (parse it
# with protobuf instead)

def write_columns(
    batch_id: str,
    request_ids: list[str],
    bid: npt.NDArray[np.int64],  # const int64_t[B]; 0/1
    price: npt.NDArray[np.int64],  # const int64_t[B]
    campaign_ids: list[str],
    creative_ids: list[str],
    score: npt.NDArray[np.float32],  # const float[B]
    reason: npt.NDArray[np.int64],  # const int64_t[B]
    value: npt.NDArray[np.int64],  # const int64_t[B]
    errors: dict[int, str],  # event position -> error
    world_version: str,
) -> bytes: ...

def latency_field(server_latency_us: int) -> bytes: ...  # int64_t
