"""Server configuration: defaults here; the CLI fills them from flags and ADBID_* variables."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path


def adbid_home() -> Path:
    """$ADBID_HOME, else ~/.cache/adbid (or under $XDG_CACHE_HOME)."""
    home = os.environ.get("ADBID_HOME") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "adbid"
    return Path(home)


def default_world_dir() -> Path:
    """Where `adbid serve` looks for (and builds) the demo world."""
    return adbid_home() / "worlds" / "demo"


def default_ledger_path() -> Path:
    return adbid_home() / "ledger"


@dataclass
class ServerConfig:
    world: Path = field(default_factory=default_world_dir)
    ledger: Path | None = field(default_factory=default_ledger_path)  # log dir; None = memory only
    ledger_sync: str = "write"  # "write" survives kill -9; "fsync" also power loss (5-12 ms/commit)
    frequency_slots: int = 1 << 20  # frequency-cap counters (24 bytes each)
    host: str = "127.0.0.1"
    port: int = 50051  # 0 = pick a free port
    metrics_port: int = 9464  # Prometheus /metrics on host; 0 = off, -1 = any free port
    admin_host: str = "127.0.0.1"  # the Admin service listens here, apart from bidding traffic
    admin_port: int = 50052  # 0 = any free port; -1 = on the main port (needs a token off loopback)
    admin_token: str = ""  # when set, every Admin call needs "authorization: Bearer <token>"
    tls_cert: Path | None = None  # PEM certificate chain for the gRPC port (TLS on when set)
    tls_key: Path | None = None  # PEM private key for tls_cert
    tls_client_ca: Path | None = None  # PEM CA bundle: clients must present a cert it signed
    top_k: int = 16  # candidates retrieved per event
    faiss_threads: int = 1  # OpenMP threads for FAISS search
    onnx_threads: int = 1  # onnxruntime intra-op threads
    onnx_spinning: bool = False  # let onnxruntime threads spin between runs
    native_threads: int = 2  # executor threads running retrieval + scoring, overlapping batches
    use_gpu: bool = True  # take the CUDA provider when onnxruntime offers it
    require_gpu: bool = False  # refuse to start unless the CUDA provider runs the model
    shading: float = 0.85  # first-price bid = value x shading (at least the floor)
    max_batch_events: int = 4096  # larger batches are refused with INVALID_ARGUMENT
    max_message_bytes: int = 16 * 1024 * 1024  # gRPC receive/send limit
    default_deadline_ms: int = 50  # when neither the call nor the batch carries one
    send_margin_ms: float = 4.0  # answers must leave this long before the deadline (one
    # ready later is withheld): the way back to the caller (network, its event loop) is part
    # of the caller's deadline, and so is the server's own event loop after the last check,
    # up to ~2 ms under overload (2 ms left late answers at 4x load, 4 ms none: README)
    reservation_ttl_s: float = 300.0  # unanswered bids release their reservation after this
    grace_s: float = 5.0  # drain time on SIGTERM
    max_stream_inflight: int = 8  # batches in flight per BidStream
    max_inflight_batches: int = 32  # most batches ever admitted at once (the adaptive limit's cap)

    workers: int = 1  # processes sharing the port (SO_REUSEPORT); each owns 1/N of every budget
    worker_index: int = 0  # which worker this process is (set by the supervisor, not by users)
    gil_switch_ms: float = 1.0  # Python's thread switch interval (its default, 5 ms, delays
    # threads that finish native work and need the GIL back to hand over their result)

    def as_dict(self) -> dict[str, object]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, object]) -> ServerConfig:
        """The inverse of as_dict (paths back to Path)."""
        return cls(**{k: Path(v) if k in PATH_FIELDS and v is not None else v
                      for k, v in values.items()})


PATH_FIELDS = ("world", "ledger", "tls_cert", "tls_key", "tls_client_ca")


def read_config_file(path: Path) -> dict[str, object]:
    """A TOML file of ServerConfig fields (top-level keys, snake_case) -> validated values.

    Unknown keys and wrong types are refused with the key's name.
    """
    import tomllib

    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ValueError(f"config file {path}: {exc}") from None
    known = {f.name: f for f in fields(ServerConfig)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ValueError(f"config file {path}: unknown keys {unknown}; known: {sorted(known)}")
    out: dict[str, object] = {}
    for key, value in data.items():
        default = getattr(ServerConfig(), key)
        if key in PATH_FIELDS:
            if not isinstance(value, str):
                raise ValueError(f"config file {path}: {key} must be a path string")
            out[key] = Path(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"config file {path}: {key} must be true or false")
            out[key] = value
        elif isinstance(default, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or (
                    isinstance(default, int) and not isinstance(value, int)):
                raise ValueError(f"config file {path}: {key} must be a {type(default).__name__}")
            out[key] = value
        else:
            if not isinstance(value, str):
                raise ValueError(f"config file {path}: {key} must be a string")
            out[key] = value
    return out
