"""The `adbid` command line: serve, demo-world, bid, status."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from adbid.config import ServerConfig, default_ledger_path, default_world_dir

app = typer.Typer(add_completion=False, no_args_is_help=True, help=(
    "adbid: a real-time bidding decision server. Batches of ad events in over gRPC; "
    "FAISS retrieval, ONNX intent scoring and a compiled decision loop; one bid or "
    "no-bid per event out."))
console = Console()
DEFAULTS = ServerConfig()
ADMIN_TARGET = f"{DEFAULTS.admin_host}:{DEFAULTS.admin_port}"
TargetOpt = typer.Option("127.0.0.1:50051", envvar="ADBID_TARGET", help="Bidder address.")
AdminTargetOpt = typer.Option(ADMIN_TARGET, envvar="ADBID_ADMIN_TARGET",
                              help="Admin address (the server's --admin-host:--admin-port).")
TokenOpt = typer.Option("", envvar="ADBID_ADMIN_TOKEN", help="Admin bearer token, if required.")
TlsCaOpt = typer.Option(None, envvar="ADBID_TLS_CA", help="PEM CA to verify the server (TLS).")
TlsCertOpt = typer.Option(None, envvar="ADBID_TLS_CLIENT_CERT",
                          help="PEM client certificate (mutual TLS).")
TlsKeyOpt = typer.Option(None, envvar="ADBID_TLS_CLIENT_KEY", help="PEM key of the client cert.")


def _channel(target: str, ca: Path | None = None, cert: Path | None = None,
             key: Path | None = None):
    import grpc

    if ca is None and cert is None:
        return grpc.insecure_channel(target)
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None)
    return grpc.secure_channel(target, creds)


def _auth(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


def _rpc(call):
    """Make one RPC; a gRPC failure becomes a one-line error and exit status 1."""
    import grpc

    try:
        return call()
    except grpc.RpcError as exc:
        console.print(f"[red]error:[/red] {exc.code().name}: {exc.details()}")
        raise typer.Exit(1) from None


def _admin(target: str, token: str, method: str, request, timeout_s: float = 5.0):
    """Call one Admin method on `target`, with the bearer token when one is given."""
    from adbid.v1 import admin_pb2_grpc

    with _channel(target) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        return _rpc(lambda: getattr(stub, method)(request, timeout=timeout_s,
                                                  metadata=_auth(token)))


def _logging(verbose: bool) -> None:
    from adbid import logs

    logs.setup("text", verbose)


def _ensure_world(world: Path, seed: int) -> None:
    """Build the demo world at `world` if it is the default location and missing."""
    from adbid.world import artifacts as world_mod

    if (world / world_mod.MANIFEST).is_file():
        return
    if world.resolve() != default_world_dir().resolve():
        raise typer.BadParameter(f"no world at {world}; build one with "
                                 f"`adbid demo-world --out {world}`", param_hint="--world")
    console.print(f"[bold]No world at {world}: building the demo world (seed {seed})[/bold]")
    _build_demo(world, seed, None)


def _build_demo(out: Path, seed: int, spec_overrides: dict | None) -> dict:
    from adbid.world.demo_world import DemoWorldSpec, build

    spec = DemoWorldSpec(seed=seed, **(spec_overrides or {}))
    manifest = build(out, spec, progress=sys.stderr.isatty())
    m, c = manifest["model"], manifest["counts"]
    console.print(
        f"world [bold]{manifest['version']}[/bold] at {out} in {manifest['build_seconds']} s: "
        f"{c['users']:,} users, {c['ads']:,} ads, {c['campaigns']} campaigns, d={c['dim']}, "
        f"index {manifest['index']}\n"
        f"intent model {m['kind']}: held-out AUC [bold]{m['auc']:.4f}[/bold] "
        f"(ground-truth probabilities reach {m['ground_truth_auc']:.4f}) on "
        f"{m['heldout_impressions']:,} impressions, click rate {m['click_rate']:.3f}")
    return manifest


# serve's parameter name -> ServerConfig field, where the two differ.
_FIELD_OF = {"gpu": "use_gpu", "max_batch": "max_batch_events", "deadline_ms":
             "default_deadline_ms", "max_inflight": "max_inflight_batches"}


@app.command()
def serve(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", "-c", envvar="ADBID_CONFIG",
                                help="TOML file of settings (keys as in adbid.config."
                                     "ServerConfig); flags and ADBID_* variables win over it."),
    log_format: str = typer.Option("auto", envvar="ADBID_LOG_FORMAT",
                                   help="json, text, or auto (text on a terminal)."),
    world: Path = typer.Option(DEFAULTS.world, envvar="ADBID_WORLD",
                               help="World directory. The default one is built if missing."),
    host: str = typer.Option(DEFAULTS.host, envvar="ADBID_HOST", help="Address to listen on."),
    port: int = typer.Option(DEFAULTS.port, envvar="ADBID_PORT", help="gRPC port (0 = any)."),
    metrics_port: int = typer.Option(DEFAULTS.metrics_port, envvar="ADBID_METRICS_PORT",
                                     help="Prometheus /metrics port on --host (0 = off)."),
    top_k: int = typer.Option(DEFAULTS.top_k, envvar="ADBID_TOP_K",
                              help="Candidates retrieved per event."),
    faiss_threads: int = typer.Option(DEFAULTS.faiss_threads, envvar="ADBID_FAISS_THREADS",
                                      help="OpenMP threads for FAISS."),
    onnx_threads: int = typer.Option(DEFAULTS.onnx_threads, envvar="ADBID_ONNX_THREADS",
                                     help="onnxruntime intra-op threads."),
    onnx_spinning: bool = typer.Option(DEFAULTS.onnx_spinning, envvar="ADBID_ONNX_SPINNING",
                                       help="Let onnxruntime threads spin between runs."),
    native_threads: int = typer.Option(DEFAULTS.native_threads, envvar="ADBID_NATIVE_THREADS",
                                       help="Threads running retrieval + scoring."),
    gpu: bool = typer.Option(DEFAULTS.use_gpu, envvar="ADBID_GPU",
                             help="Use the CUDA provider when onnxruntime offers it."),
    require_gpu: bool = typer.Option(False, envvar="ADBID_REQUIRE_GPU",
                                     help="Refuse to start unless the model runs on CUDA."),
    shading: float = typer.Option(DEFAULTS.shading, envvar="ADBID_SHADING",
                                  help="First-price bid = value x shading (0..1]."),
    max_batch: int = typer.Option(DEFAULTS.max_batch_events, envvar="ADBID_MAX_BATCH",
                                  help="Largest batch accepted, in events."),
    deadline_ms: int = typer.Option(DEFAULTS.default_deadline_ms, envvar="ADBID_DEADLINE_MS",
                                    help="Deadline when the call carries none."),
    send_margin_ms: float = typer.Option(DEFAULTS.send_margin_ms, envvar="ADBID_SEND_MARGIN_MS",
                                         min=0.0,
                                         help="Time kept back from each deadline for the way "
                                              "back to the caller (this server's event loop "
                                              "after the last check, the network, the "
                                              "caller's loop): answers must leave this much "
                                              "early, "
                                              "and one ready later is withheld "
                                              "(DEADLINE_EXCEEDED, its bids withdrawn)."),
    max_inflight: int = typer.Option(DEFAULTS.max_inflight_batches, envvar="ADBID_MAX_INFLIGHT",
                                     help="Cap on batches admitted at once; the limit adapts "
                                          "below it to what meets deadlines, and batches above "
                                          "it are refused at once (RESOURCE_EXHAUSTED)."),
    admin_host: str = typer.Option(DEFAULTS.admin_host, envvar="ADBID_ADMIN_HOST",
                                   help="Address of the Admin service's own port."),
    admin_port: int = typer.Option(DEFAULTS.admin_port, envvar="ADBID_ADMIN_PORT",
                                   help="Admin port (0 = any; -1 = on the main port, which "
                                        "needs --admin-token unless --host is loopback)."),
    admin_token: str = typer.Option("", envvar="ADBID_ADMIN_TOKEN",
                                    help="Require 'authorization: Bearer TOKEN' on Admin calls."),
    tls_cert: Path = typer.Option(None, envvar="ADBID_TLS_CERT",
                                  help="PEM certificate chain: TLS on the gRPC port."),
    tls_key: Path = typer.Option(None, envvar="ADBID_TLS_KEY", help="PEM key of --tls-cert."),
    tls_client_ca: Path = typer.Option(None, envvar="ADBID_TLS_CLIENT_CA",
                                       help="PEM CA: require client certificates (mutual TLS)."),
    ledger: Path = typer.Option(default_ledger_path(), envvar="ADBID_LEDGER",
                                help="Spend ledger directory (append-only log); created if "
                                     "missing, replayed at start-up."),
    ledger_sync: str = typer.Option(DEFAULTS.ledger_sync, envvar="ADBID_LEDGER_SYNC",
                                    help="'write': each commit is handed to the OS before the "
                                         "answer (survives kill -9); 'fsync': also fdatasync'ed "
                                         "(survives power loss; 5-12 ms a commit here)."),
    frequency_slots: int = typer.Option(DEFAULTS.frequency_slots, envvar="ADBID_FREQUENCY_SLOTS",
                                        help="Frequency-cap counters (24 bytes each)."),
    reservation_ttl_s: float = typer.Option(DEFAULTS.reservation_ttl_s,
                                            envvar="ADBID_RESERVATION_TTL_S",
                                            help="Release a bid's reservation after this."),
    workers: int = typer.Option(DEFAULTS.workers, envvar="ADBID_WORKERS", min=1,
                                help="Server processes sharing the port (SO_REUSEPORT), each "
                                     "with 1/N of every budget and its own ledger, Admin and "
                                     "metrics port (+i); about one per core."),
    gil_switch_ms: float = typer.Option(DEFAULTS.gil_switch_ms, envvar="ADBID_GIL_SWITCH_MS",
                                        help="Python's thread switch interval: how long the "
                                             "event loop may keep the GIL from a thread whose "
                                             "native work is done."),
    seed: int = typer.Option(42, help="Seed of the demo world, when it has to be built."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
) -> None:
    """Serve bids over gRPC. With no options: the demo world on 127.0.0.1:50051."""
    from adbid import logs
    from adbid.config import read_config_file

    logs.setup(log_format, verbose)
    values = {k: v for k, v in ctx.params.items()
              if k not in ("ctx", "config", "log_format", "seed", "verbose")}
    settings = {_FIELD_OF.get(k, k): v for k, v in values.items()}
    if config is not None:
        try:
            from_file = read_config_file(config)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--config") from None
        param_of = {_FIELD_OF.get(k, k): k for k in values}
        for key, value in from_file.items():
            param = param_of.get(key)
            source = ctx.get_parameter_source(param) if param else None
            if source is None or source.name == "DEFAULT":  # flags and ADBID_* win
                settings[key] = value
    # ctx.params holds paths as str in some typer versions: from_dict makes them Path.
    cfg = ServerConfig.from_dict(settings)
    _ensure_world(cfg.world, seed)
    shown = {**cfg.as_dict(), "admin_token": "(set)" if cfg.admin_token else ""}
    logging.getLogger("adbid").info("configuration: %s", json.dumps(shown),
                                    extra={"config": shown, "config_file": str(config or "")})
    if cfg.workers > 1:
        from adbid.workers import WorkerSetupError, supervise

        try:
            raise typer.Exit(supervise(cfg, log_format, verbose))
        except WorkerSetupError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(2) from None
    from adbid.stages.scoring import GpuUnavailableError
    from adbid.server import run
    from adbid.world.artifacts import WorldError

    try:
        run(cfg)
    except (WorldError, GpuUnavailableError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


@app.command("demo-world")
def demo_world(
    out: Path = typer.Option(default_world_dir(), help="Directory to write (replaced if present)."),
    seed: int = typer.Option(42, help="Everything is drawn from this seed."),
    users: int = typer.Option(100_000, help="Users in the embedding store."),
    campaigns: int = typer.Option(300, help="Campaigns."),
    ads_per_campaign: int = typer.Option(10, help="Ads (creatives) per campaign."),
    impressions: int = typer.Option(200_000, help="Logged impressions to train on (80%) and test."),
    dim: int = typer.Option(64, help="Embedding dimension."),
) -> None:
    """Build the synthetic demo world: users, ads, campaigns and a trained ONNX intent model."""
    _logging(False)
    _build_demo(out, seed, {"users": users, "campaigns": campaigns,
                            "ads_per_campaign": ads_per_campaign, "impressions": impressions,
                            "dim": dim})


@app.command()
def bid(
    target: str = TargetOpt,
    events: int = typer.Option(8, help="Events in the batch."),
    seed: int = typer.Option(1, help="Seed of the demo events."),
    test: bool = typer.Option(False, help="Mark events as test traffic (no budget effects)."),
    timeout_ms: int = typer.Option(1000, help="gRPC deadline."),
    rows: int = typer.Option(20, help="Decisions to print (0 = all)."),
    tls_ca: Path = TlsCaOpt,
    tls_cert: Path = TlsCertOpt,
    tls_key: Path = TlsKeyOpt,
) -> None:
    """Send a batch of demo events to a running server and print the decisions."""
    import numpy as np

    from adbid.world.demo_traffic import make_events
    from adbid.v1 import bidder_pb2, bidder_pb2_grpc

    batch = make_events(events, np.random.default_rng(seed), test=test)
    with _channel(target, tls_ca, tls_cert, tls_key) as channel:
        stub = bidder_pb2_grpc.BidderStub(channel)
        resp = _rpc(lambda: stub.Bid(bidder_pb2.BidRequest(batch_id=f"cli-{seed}", events=batch),
                                     timeout=timeout_ms / 1000))
    table = Table(title=f"{len(resp.decisions)} decisions, world {resp.world_version}, "
                        f"server {resp.server_latency_us} us")
    for col in ("request", "user", "floor CPM", "bid CPM", "value CPM", "campaign", "creative",
                "P(intent)", "no-bid reason"):
        table.add_column(col)
    shown = resp.decisions if rows == 0 else resp.decisions[:rows]
    for e, d in zip(batch, shown):
        table.add_row(d.request_id[:14], e.user_id or "(none)", f"{e.floor_cpm_micros / 1e6:.2f}",
                      f"{d.price_cpm_micros / 1e6:.2f}" if d.bid else "",
                      f"{d.value_cpm_micros / 1e6:.2f}", d.campaign_id, d.creative_id,
                      f"{d.score:.3f}" if d.bid else "",
                      "" if d.bid else bidder_pb2.NoBidReason.Name(d.no_bid_reason)[14:]
                      + (f": {d.error}" if d.error else ""))
    console.print(table)
    console.print(f"{sum(d.bid for d in resp.decisions)} bids / {len(resp.decisions)} events")


@app.command()
def status(
    target: str = AdminTargetOpt,
    campaigns: int = typer.Option(10, help="Campaigns to list, by spend (0 = none)."),
    token: str = TokenOpt,
) -> None:
    """Show what a running server serves: world, provider, model AUC, stage latencies, spend."""
    from adbid.v1 import admin_pb2

    s = _admin(target, token, "Status", admin_pb2.StatusRequest())
    if s.workers > 1:
        console.print(f"worker {s.worker + 1} of {s.workers}: budgets below are this worker's "
                      f"1/{s.workers} slices")
    console.print(f"adbid {s.version}, up {s.uptime_s:.0f} s; world [bold]{s.world_version}[/bold]"
                  f" ({s.world_path}): {s.users:,} users, {s.ads:,} ads, "
                  f"{s.campaigns_count} campaigns")
    console.print(f"execution provider [bold]{s.execution_provider}[/bold] (available: "
                  f"{', '.join(s.available_providers)}); FAISS threads {s.faiss_threads}, "
                  f"onnxruntime threads {s.onnx_intra_op_threads}, top-K {s.top_k}")
    console.print(f"model AUC {s.model_auc:.4f} (ground truth {s.ground_truth_auc:.4f}); "
                  f"{s.events_total:,} events, {s.bids_total:,} bids")
    t = Table(title="stage latency per batch (us)")
    for col in ("stage", "batches", "mean", "p50", "p99"):
        t.add_column(col)
    for st in s.stages:
        t.add_row(st.stage, f"{st.count:,}", f"{st.mean_us:.0f}", f"{st.p50_us:.0f}",
                  f"{st.p99_us:.0f}")
    console.print(t)
    if campaigns:
        t = Table(title=f"top {campaigns} campaigns by spend (currency units)")
        for col in ("campaign", "active", "budget", "spent", "reserved", "pacing"):
            t.add_column(col)
        for c in sorted(s.campaigns, key=lambda c: -(c.spent_micros + c.reserved_micros))[:campaigns]:
            t.add_row(c.campaign_id, "yes" if c.active else "no", f"{c.budget_micros / 1e6:.2f}",
                      f"{c.spent_micros / 1e6:.4f}", f"{c.reserved_micros / 1e6:.4f}",
                      f"{c.pacing_multiplier:.2f}")
        console.print(t)


@app.command()
def bench(
    target: str = TargetOpt,
    admin_target: str = AdminTargetOpt,
    rate: float = typer.Option(0.0, help="Open loop: batches/s with Poisson arrivals "
                                         "(0 = closed loop)."),
    concurrency: int = typer.Option(4, help="Closed loop: callers, each waiting for its answer."),
    batch: int = typer.Option(256, help="Events per batch."),
    deadline_ms: float = typer.Option(10.0, help="Deadline per batch (gRPC and deadline_ms)."),
    duration_s: float = typer.Option(10.0, help="Length of each run."),
    max_requests: int = typer.Option(1_000_000, help="Upper bound on batches per run."),
    sweep: bool = typer.Option(False, help="Raise the open-loop rate (from --rate, x1.4 a step) "
                                           "until p99 exceeds --target-p99-ms."),
    target_p99_ms: float = typer.Option(10.0, help="Latency target of the sweep."),
    test_traffic: bool = typer.Option(False, help="Send test traffic (no budget effects)."),
    wire: str = typer.Option("columns", help="Request form: columns (EventColumns, the fast "
                                             "form) or events (one AdEvent message each)."),
    rpc: str = typer.Option("unary", help="unary (a Bid call per batch) or stream (one "
                                          "BidStream per connection; cheaper per batch)."),
    out: Path = typer.Option(Path("bench-results"), help="Directory for JSON and PNG output."),
) -> None:
    """Load a running server over gRPC and report throughput, latency (HDR) and stage costs."""
    import asyncio
    from dataclasses import asdict

    from adbid.bench import report as bench_report
    from adbid.bench.loadgen import RPCS, WIRES, LoadSpec, run, server_stages
    from adbid.bench.loadgen import sweep as rate_sweep

    _logging(False)
    spec = LoadSpec(target=target, admin_target=admin_target, rate=rate, concurrency=concurrency,
                    batch=batch, deadline_ms=deadline_ms, duration_s=duration_s,
                    max_requests=max_requests, test_traffic=test_traffic, wire=wire, rpc=rpc)
    for value, allowed, hint in ((wire, WIRES, "--wire"), (rpc, RPCS, "--rpc")):
        if value not in allowed:
            raise typer.BadParameter(" or ".join(allowed), param_hint=hint)
    if sweep:
        if rate <= 0:
            raise typer.BadParameter("--sweep needs a starting --rate", param_hint="--rate")
        results, best = rate_sweep(spec, target_p99_ms, rate)
    else:
        results, best = [asyncio.run(run(spec))], None
    try:
        stages = asyncio.run(server_stages(admin_target))
    except Exception as exc:  # noqa: BLE001 - the breakdown is a bonus; say why it is missing
        console.print(f"[yellow]no stage breakdown from {admin_target}: {exc}[/yellow]")
        stages = {}
    table = Table(title=f"adbid bench: batch {batch}, deadline {deadline_ms:g} ms; "
                        "latency in ms; events per second")
    for col in ("load", "calls/s", "events/s", "goodput", "p50", "p90", "p99", "p99.9",
                "shed", "late", "errors", "bids"):
        table.add_column(col, no_wrap=True)
    for r in results:
        d, lat = r.as_dict(), r.latency_us
        table.add_row(f"{r.spec['rate']:.0f}/s" if r.spec["rate"] else f"c={concurrency}",
                      f"{d['requests_per_s']:.0f}", f"{d['events_per_s']:,.0f}",
                      f"{d['goodput_events_per_s']:,.0f}",
                      *(f"{lat.get(p, 0) / 1000:.1f}" for p in ("p50", "p90", "p99", "p99.9")),
                      f"{r.shed_events:,}", f"{r.late}",
                      ", ".join(f"{k} {v}" for k, v in r.errors.items()),
                      f"{d['bid_rate']:.0%}")
    console.print(table)
    if best is not None:
        console.print(f"highest rate with p99 <= {target_p99_ms:g} ms: "
                      f"{best.spec['rate']:.0f} batches/s = "
                      f"{best.goodput_events_per_s:,.0f} events/s")
    payload = {"spec": asdict(spec), "runs": [r.as_dict() for r in results],
               "best": best.as_dict() if best else None, "server_stages": stages}
    console.print(f"-> {bench_report.write_json(out / 'bench.json', payload)}")
    try:
        bench_report.plot_latency_vs_throughput(results, out / "latency.png",
                                                f"batch {batch}, deadline {deadline_ms:g} ms")
        if stages:
            bench_report.plot_stages(stages, out / "stages.png", "server time per batch by stage")
        console.print(f"-> {out / 'latency.png'}" + (f", {out / 'stages.png'}" if stages else ""))
    except ImportError:
        console.print("[yellow]plots need matplotlib: pip install 'adbid[bench]'[/yellow]")


@app.command()
def reload(
    world: str = typer.Argument("", help="World directory to serve (default: the current one)."),
    target: str = AdminTargetOpt,
    token: str = TokenOpt,
) -> None:
    """Load a world into a running server: validated, warmed up, swapped in atomically."""
    from adbid.v1 import admin_pb2

    path = str(Path(world).resolve()) if world else ""
    r = _admin(target, token, "Reload", admin_pb2.ReloadRequest(world_path=path), 120)
    console.print(f"now serving [bold]{r.world_version}[/bold] (was {r.previous_version}); "
                  f"loaded, validated and warmed up in {r.load_ms:.0f} ms")


@app.command()
def campaign(
    campaign_id: str = typer.Argument(..., help="Campaign to change."),
    budget: float = typer.Option(None, help="New total budget, in currency units (e.g. 250.5)."),
    pause: bool = typer.Option(None, "--pause/--resume", help="Pause or resume bidding."),
    reason: str = typer.Option("", help="Who or why; written to the ledger's change log."),
    target: str = AdminTargetOpt,
    token: str = TokenOpt,
) -> None:
    """Change a campaign's budget or pause it on a running server (durable, logged)."""
    from adbid.money.units import MICROS_PER_UNIT
    from adbid.v1 import admin_pb2

    if budget is None and pause is None:
        raise typer.BadParameter("give --budget, --pause or --resume")
    req = admin_pb2.UpdateCampaignRequest(campaign_id=campaign_id, reason=reason)
    if budget is not None:
        req.budget_micros = round(budget * MICROS_PER_UNIT)
    if pause is not None:
        req.active = not pause
    c = _admin(target, token, "UpdateCampaign", req).campaign
    console.print(f"{c.campaign_id}: {'active' if c.active else 'paused'}, budget "
                  f"{c.budget_micros / 1e6:.2f}, spent {c.spent_micros / 1e6:.4f}, reserved "
                  f"{c.reserved_micros / 1e6:.4f}")


if __name__ == "__main__":
    app()
