"""Server configuration: defaults here; the CLI fills them from flags and ADBID_* variables."""

from __future__ import annotations

import os
from dataclasses import Field, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


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


def setting(default, help: str, *, flag: str = "", factory=None, minimum=None,
            choices: tuple[str, ...] = (), cli: bool = True):
    """A ServerConfig field with what the CLI needs: its help text, its flag (default:
    --field-name), an optional lower bound or the values allowed. The env variable is
    ADBID_ + the flag's name."""
    meta = {"help": help, "flag": flag, "min": minimum, "choices": choices, "cli": cli}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class ServerConfig:
    """Every setting of `adbid serve`, declared once: the CLI's options, their ADBID_*
    variables and the config file's keys are all made from these fields."""

    world: Path = setting(None, "World directory. The default one is built if missing.",
                          factory=default_world_dir)
    ledger: Path | None = setting(
        None, "Spend ledger directory (append-only log); created if missing, replayed at "
        "start-up.", factory=default_ledger_path)
    ledger_sync: str = setting(
        "write", "'write': each commit is handed to the OS before the answer (survives "
        "kill -9); 'fsync': also fdatasync'ed (survives power loss; 5-12 ms a commit here).",
        choices=("write", "fsync"))
    frequency_slots: int = setting(1 << 20, "Frequency-cap counters (24 bytes each).",
                                   minimum=1)
    host: str = setting("127.0.0.1", "Address to listen on.")
    port: int = setting(50051, "gRPC port (0 = any free port).", minimum=0)
    metrics_port: int = setting(9464, "Prometheus /metrics port (0 = off, -1 = any free "
                                "port).")
    metrics_host: str = setting("127.0.0.1", "Address of /metrics. It shows every campaign's "
                                "budget and spend, without auth: expose it off loopback only "
                                "on purpose.")
    admin_host: str = setting("127.0.0.1", "Address of the Admin service's own port; off "
                              "loopback it needs --admin-token and TLS.")
    admin_port: int = setting(50052, "Admin port (0 = any; -1 = on the main port). Off "
                              "loopback, Admin needs --admin-token and TLS.")
    admin_token: str = setting("", "Require 'authorization: Bearer TOKEN' on Admin calls.")
    tls_cert: Path | None = setting(None, "PEM certificate chain: TLS on the gRPC and Admin "
                                    "ports.")
    tls_key: Path | None = setting(None, "PEM key of --tls-cert.")
    tls_client_ca: Path | None = setting(None, "PEM CA: require client certificates "
                                         "(mutual TLS).")
    top_k: int = setting(16, "Candidates scored per event.", minimum=1)
    overfetch: int = setting(
        8, "An event refused for its top-k candidates (targeting, a publisher block, the "
        "floor, a frequency cap) is searched top-k x this deep, and the next top-k that its "
        "targeting admits are scored and decided, twice at most (1: never).", minimum=1)
    faiss_threads: int = setting(1, "OpenMP threads for FAISS search.", minimum=1)
    onnx_threads: int = setting(1, "onnxruntime intra-op threads.", minimum=1)
    onnx_spinning: bool = setting(False, "Let onnxruntime threads spin between runs.")
    event_loop: str = setting("uvloop", "The event loop gRPC, HTTP and the pipeline run on: "
                              "'uvloop' (libuv; faster per request) or 'asyncio' (the "
                              "standard library's).", choices=("uvloop", "asyncio"))
    inline_events: int = setting(
        16, "Batches of at most this many events run retrieval and scoring on the event "
        "loop's own thread: for small batches the hand-off to a native thread and back costs "
        "more CPU than it overlaps. 0: always hand off.", minimum=0)
    native_threads: int = setting(2, "Threads running retrieval + scoring, overlapping "
                                  "batches.", minimum=1)
    split_events: int = setting(
        128, "A batch of at least this many events that finds no other batch in the pipeline "
        "is split over the native threads, its parts retrieved and scored at once (the "
        "threads would otherwise idle). 0: never split.", minimum=0)
    use_gpu: bool = setting(True, "Use the CUDA provider when onnxruntime offers it.",
                            flag="--gpu")
    require_gpu: bool = setting(False, "Refuse to start unless the model runs on CUDA.")
    gpu_io: str = setting(
        "graph", "On CUDA: 'graph' keeps the model's inputs and output bound in GPU memory "
        "and replays a captured CUDA graph per padded batch size; 'bind' binds them without "
        "graphs; 'plain' lets onnxruntime copy them at every run.", choices=("graph", "bind",
                                                                             "plain"))
    shading: float = setting(0.85, "First-price bid = value x shading (0..1], at least the "
                             "floor.")
    shading_policy: str = setting(
        "fixed", "First-price shading: 'fixed' (value x --shading) or 'learned' (per site and "
        "slot size, the bid that maximises expected surplus under the minimum bids to win "
        "that loss notices report; --shading until a segment is known).",
        choices=("fixed", "learned"))
    pacing_profile: str = setting(
        "", "Traffic forecast for even-paced daily campaigns: 24 comma-separated hourly "
        "weights, UTC hour 0 first (e.g. yesterday's requests per hour); each day's spend is "
        "planned along it. Empty: an even plan over the day.")
    unspecified_auction: str = setting(
        "second", "How an event with AUCTION_TYPE_UNSPECIFIED is bid: 'second' (OpenRTB's "
        "default: the value, unshaded) or 'first' (shaded like a first-price auction).",
        choices=("second", "first"))
    max_batch_events: int = setting(4096, "Largest batch accepted, in events (larger: "
                                    "INVALID_ARGUMENT).", flag="--max-batch", minimum=1)
    max_message_bytes: int = setting(16 * 1024 * 1024, "gRPC receive and send limit, bytes.",
                                     minimum=1024)
    default_deadline_ms: int = setting(50, "Deadline when neither the call nor the batch "
                                       "carries one.", flag="--deadline-ms", minimum=1)
    # The way back to the caller (network, its event loop) is part of the caller's
    # deadline, and so is this server's event loop after the last check, up to ~2 ms under
    # overload (2 ms left late answers at 4x load, 4 ms none: docs/performance.md).
    send_margin_ms: float = setting(
        4.0, "Time kept back from each deadline for the way back to the caller: answers must "
        "leave this much early, and one ready later is withheld (DEADLINE_EXCEEDED, its bids "
        "withdrawn).", minimum=0.0)
    reservation_ttl_s: float = setting(
        300.0, "A bid's reservation window: without a notice by then (or by the OpenRTB "
        "imp.exp, if longer) it expires, its frequency count is given back and its money "
        "stays in doubt for --late-win-window-s.", minimum=0.0)
    late_win_window_s: float = setting(
        900.0, "How long an expired reservation's money stays reserved, in doubt, for a win "
        "or billing notice that comes late (0: released at expiry; late wins can then "
        "overspend).", minimum=0.0)
    redis: str = setting(
        "", "Share budgets with other replicas through this Redis (redis:// or rediss://, "
        "with a password if it has one): each process bids on leases of every budget. "
        "Empty: budgets are this server's own (1/N slices under --workers).")
    redis_sync_ms: float = setting(500.0, "With --redis: how often a process reports its "
                                   "spend and renews its leases (one script call).",
                                   minimum=10.0)
    redis_lease_ttl_s: float = setting(
        30.0, "With --redis: a process that has not synced for this long loses its leases "
        "(but the part covering its open reservations); it stops using them 2 s earlier.",
        minimum=5.0)
    redis_float_micros: int = setting(100_000, "With --redis: the least float a lease holds "
                                      "beyond open reservations, micros.", minimum=0)
    redis_frequency: bool = setting(
        True, "With --redis: share frequency counts too (pushed each sync; a cap holds to "
        "within what other replicas show a user before their next sync). Off: each process "
        "caps alone, up to N x the cap across N.", flag="--redis-frequency")
    grace_s: float = setting(5.0, "Drain time on SIGTERM.", minimum=0.0)
    max_stream_inflight: int = setting(8, "Batches in flight per BidStream.", minimum=1)
    max_inflight_batches: int = setting(
        32, "Cap on batches admitted at once; the limit adapts below it to what meets "
        "deadlines, and batches above it are refused at once (RESOURCE_EXHAUSTED).",
        flag="--max-inflight", minimum=1)
    batcher: bool = setting(True, "Gather small batches from concurrent callers (OpenRTB "
                            "requests, small gRPC batches) into one pipeline batch.")
    batch_max: int = setting(256, "Most events in a batch the dynamic batcher gathers.",
                             minimum=1)
    batch_window_ms: float = setting(
        0.0, "0 (the default): an idle pipeline takes the first caller at once. Above 0: "
        "when callers arrive faster than one in this many milliseconds, an idle pipeline "
        "waits up to this long from the first caller to gather more (fewer, larger "
        "batches: less CPU a request under load, up to this much more latency); slower "
        "traffic never waits. Measured in docs/performance.md: less CPU a request, not "
        "always more requests a second at a p99 bound.", minimum=0.0)
    batch_gather_events: int = setting(32, "gRPC batches of at most this many events go "
                                       "through the dynamic batcher (0 = none).", minimum=0)
    openrtb_host: str = setting("127.0.0.1", "Address of the OpenRTB 2.6 HTTP endpoint.")
    openrtb_port: int = setting(8080, "OpenRTB HTTP port (0 = off, -1 = any free port).",
                                minimum=-1)
    openrtb_base_url: str = setting("", "Base of the notice URLs adbid puts in its bids (for "
                                    "a proxy in front); default http://HOST:PORT.")
    openrtb_network_ms: float = setting(10.0, "Taken off each request's tmax for the network "
                                        "both ways; the rest is the deadline.", minimum=0.0)
    openrtb_nobid: str = setting("204", "How a no-bid is answered: '204' (no body) or 'nbr' "
                                 "(200 with a no-bid reason).", choices=("204", "nbr"))
    openrtb_seat: str = setting("adbid", "The seat adbid bids as (seatbid.seat; wseat and "
                                "bseat are matched against it).")
    openrtb_max_body_bytes: int = setting(256 * 1024, "Largest request body, after gzip "
                                          "decompression (413 above).", minimum=1024)
    openrtb_max_imps: int = setting(64, "Most impressions in one request (400 above).",
                                    minimum=1)
    openrtb_max_connections: int = setting(1024, "Open HTTP connections and requests at once "
                                           "(503 above).", minimum=1)
    openrtb_keepalive_s: float = setting(30.0, "An idle keep-alive connection is closed after "
                                         "this.", minimum=0.1)
    openrtb_header_timeout_s: float = setting(5.0, "A connection that has not sent a "
                                              "request's headers within this is closed.",
                                              minimum=0.01)
    openrtb_body_timeout_s: float = setting(5.0, "A request body slower than this is refused "
                                            "(408).", minimum=0.01)
    workers: int = setting(1, "Server processes sharing the port (SO_REUSEPORT), each with "
                           "1/N of every budget and its own ledger, Admin and metrics port "
                           "(+i); about one per core.", minimum=1)
    worker_index: int = setting(0, "Which worker this process is (set by the supervisor).",
                                cli=False)
    gil_switch_ms: float = setting(
        1.0, "Python's thread switch interval: how long the event loop may keep the GIL from "
        "a thread whose native work is done (Python's default, 5 ms, delays them).",
        minimum=0.01)

    def __post_init__(self) -> None:
        """Values outside a setting's choices or bound are refused, naming the setting (the
        CLI checks them too; this covers config files, env and code)."""
        for f in fields(self):
            value, choices = getattr(self, f.name), f.metadata.get("choices")
            if choices and value not in choices:
                raise ValueError(f"{f.name}: {value!r} is not one of {', '.join(choices)}")
            low = f.metadata.get("min")
            if low is not None and isinstance(value, (int, float)) and value < low:
                raise ValueError(f"{f.name}: {value} is below the minimum of {low}")
        self.pacing_weights()  # a malformed forecast is refused here, saying what is wrong

    def pacing_weights(self) -> list[float] | None:
        """--pacing-profile as 24 hourly weights (UTC hour 0 first); None when empty."""
        text = self.pacing_profile
        if not text.strip():
            return None
        try:
            weights = [float(w) for w in text.split(",")]
        except ValueError:
            raise ValueError(f"pacing_profile: {text!r} is not 24 comma-separated "
                             "numbers") from None
        if len(weights) != 24 or not all(0 <= w < float("inf") for w in weights) \
                or sum(weights) <= 0:
            raise ValueError(f"pacing_profile: 24 hourly weights >= 0 (UTC hour 0 first), "
                             f"not all 0, are needed; got {text!r}")
        return weights

    def as_dict(self) -> dict[str, object]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ServerConfig:
        """The inverse of as_dict (paths back to Path)."""
        converted: dict[str, Any] = {k: Path(v) if k in PATH_FIELDS and v is not None else v
                                     for k, v in values.items()}
        return cls(**converted)


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


def settings() -> list[tuple[Field, str, str]]:
    """(field, flag, env variable) of every setting a user may give."""
    out = []
    for f in fields(ServerConfig):
        if not f.metadata.get("cli", True):
            continue
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        out.append((f, flag, "ADBID_" + flag[2:].upper().replace("-", "_")))
    return out


def default_target() -> str:
    """Where clients find a server started with the defaults (the Bidder service)."""
    d = ServerConfig(ledger=None)
    return f"{d.host}:{d.port}"


def default_admin_target() -> str:
    d = ServerConfig(ledger=None)
    return f"{d.admin_host}:{d.admin_port}"
