"""The `adbid` command line: serve, demo-world, bid, status."""

from __future__ import annotations

import inspect
import json
import logging
import types
import typing
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from adbid.bench.command import AdminTargetOpt, TargetOpt, bench
from adbid.bench.simulate_command import simulate_command
from adbid.config import ServerConfig, settings
from adbid.world_command import demo_world, ensure_world

app = typer.Typer(add_completion=False, no_args_is_help=True, help=(
    "adbid: a real-time bidding decision server. Batches of ad events in over gRPC; "
    "FAISS retrieval, ONNX intent scoring and a compiled decision loop; one bid or "
    "no-bid per event out."))
console = Console()
DEFAULTS = ServerConfig()
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


def _admin(target: str, token: str, method: str, request, timeout_s: float = 5.0,
           tls: tuple[Path | None, Path | None, Path | None] = (None, None, None)):
    """Call one Admin method on `target`, with the bearer token when one is given, over TLS
    when `tls` (CA, client certificate, key) names any file."""
    from adbid.v1 import admin_pb2_grpc

    with _channel(target, *tls) as channel:
        stub = admin_pb2_grpc.AdminStub(channel)
        return _rpc(lambda: getattr(stub, method)(request, timeout=timeout_s,
                                                  metadata=_auth(token)))


def _logging(verbose: bool) -> None:
    from adbid import logs

    logs.setup("text", verbose)


def _serve_parameters() -> list[inspect.Parameter]:
    """One option per ServerConfig setting: its flag, ADBID_* variable, default and help
    come from the field (adbid.config.settings)."""
    hints = typing.get_type_hints(ServerConfig)
    params = []
    for f, flag, env in settings():
        kind = hints[f.name]
        if typing.get_origin(kind) in (typing.Union, types.UnionType):
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        default = getattr(DEFAULTS, f.name)
        names = [f"{flag}/--no-{flag[2:]}"] if kind is bool else [flag]
        bounds = {"min": f.metadata["min"]} if f.metadata.get("min") is not None else {}
        option = typer.Option(default, *names, envvar=env, help=f.metadata["help"],
                              show_default=str(default) if default is not None else False,
                              **bounds)
        params.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY,
                                        default=option, annotation=kind))
    return params


def serve(ctx: typer.Context, config: Path | None, log_format: str, seed: int, verbose: bool,
          **values) -> None:
    """Serve bids over gRPC. With no options: the demo world on 127.0.0.1:50051.

    Each setting is a flag, an ADBID_* variable or a --config file key (`adbid settings`
    lists them); a flag or a variable wins over the file."""
    from adbid import logs
    from adbid.config import read_config_file

    logs.setup(log_format, verbose)
    settings_given = dict(values)
    if config is not None:
        try:
            from_file = read_config_file(config)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--config") from None
        for key, value in from_file.items():
            source = ctx.get_parameter_source(key) if key in values else None
            if source is None or source.name == "DEFAULT":  # flags and ADBID_* win
                settings_given[key] = value
    # ctx.params holds paths as str in some typer versions: from_dict makes them Path.
    try:
        cfg = ServerConfig.from_dict(settings_given)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    ensure_world(cfg.world, seed)
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
    from adbid.server import run
    from adbid.stages.scoring import GpuUnavailableError
    from adbid.world.artifacts import WorldError

    try:
        run(cfg)
    except (WorldError, GpuUnavailableError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None


serve.__signature__ = inspect.Signature([  # type: ignore[attr-defined]
    inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
    inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, annotation=Path,
                      default=typer.Option(None, "--config", "-c", envvar="ADBID_CONFIG",
        help="TOML file of settings (keys: the setting names, as `adbid settings` lists "
             "them); flags and ADBID_* variables win over it.")),
    inspect.Parameter("log_format", inspect.Parameter.KEYWORD_ONLY, annotation=str,
                      default=typer.Option("auto", envvar="ADBID_LOG_FORMAT",
                                           help="json, text, or auto (text on a terminal).")),
    *_serve_parameters(),
    inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, annotation=int, default=typer.Option(
        42, help="Seed of the demo world, when it has to be built.")),
    inspect.Parameter("verbose", inspect.Parameter.KEYWORD_ONLY, annotation=bool,
                      default=typer.Option(False, "--verbose", "-v", help="Debug logging.")),
])
app.command()(serve)
app.command("demo-world")(demo_world)


@app.command("settings")
def list_settings(markdown: bool = typer.Option(False, help="As a Markdown table.")) -> None:
    """Every setting of `adbid serve`: flag, ADBID_* variable, config-file key, default."""
    rows = [(flag, env, f.name, str(getattr(DEFAULTS, f.name)), f.metadata["help"])
            for f, flag, env in settings()]
    if markdown:
        print("| flag | variable | file key | default | what it does |")
        print("|---|---|---|---|---|")
        for row in rows:
            print("| " + " | ".join(f"`{c}`" if i < 3 else c for i, c in enumerate(row)) + " |")
        return
    table = Table(title="adbid serve settings (flag > variable > config file > default)")
    for col in ("flag", "variable", "file key", "default", "what it does"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)


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

    from adbid.v1 import bidder_pb2, bidder_pb2_grpc
    from adbid.world.demo_traffic import make_events

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
                      f"{d.score:.3f}" if d.score else "",
                      "" if d.bid else bidder_pb2.NoBidReason.Name(d.no_bid_reason)[14:]
                      + (f": {d.error}" if d.error else ""))
    console.print(table)
    console.print(f"{sum(d.bid for d in resp.decisions)} bids / {len(resp.decisions)} events")


@app.command()
def status(
    target: str = AdminTargetOpt,
    campaigns: int = typer.Option(10, help="Campaigns to list, by spend (0 = none)."),
    token: str = TokenOpt,
    tls_ca: Path = TlsCaOpt,
    tls_cert: Path = TlsCertOpt,
    tls_key: Path = TlsKeyOpt,
) -> None:
    """Show what a running server serves: world, provider, model AUC, stage latencies, spend."""
    from adbid.v1 import admin_pb2

    s = _admin(target, token, "Status", admin_pb2.StatusRequest(), tls=(tls_ca, tls_cert, tls_key))
    if s.shared_store:
        console.print(f"shared budgets in {s.shared_store} as {s.shared_process}: "
                      f"{'reachable' if s.shared_available else '[bold]NOT REACHABLE[/bold]'}"
                      f" ({s.shared_syncs:,} syncs, {s.shared_failures:,} failed); budgets "
                      "and global spend below are every replica's, spent and reserved this "
                      "process's")
        for sp in s.shared_processes:
            console.print(f"  {sp.process}: leased {sp.leased_micros / 1e6:.4f}, reported spend "
                          f"{sp.reported_spent_micros / 1e6:.4f}, "
                          + (f"lease expires in {sp.expires_in_s:.0f} s" if sp.expires_in_s >= 0
                             else "gone"))
    elif s.workers > 1:
        console.print(f"worker {s.worker + 1} of {s.workers}: budgets below are this worker's "
                      f"1/{s.workers} slices")
    console.print(f"adbid {s.version}, up {s.uptime_s:.0f} s; world [bold]{s.world_version}[/bold]"
                  f" ({s.world_path}): {s.users:,} users, {s.ads:,} ads, "
                  f"{s.campaigns_count} campaigns")
    console.print(f"execution provider [bold]{s.execution_provider}[/bold] (available: "
                  f"{', '.join(s.available_providers)}); FAISS threads {s.faiss_threads}, "
                  f"onnxruntime threads {s.onnx_intra_op_threads}, top-K {s.top_k}")
    console.print(f"model AUC {s.model_auc:.4f} (ground truth {s.ground_truth_auc:.4f}), "
                  f"calibration error {s.model_ece:.4f} ({s.model_calibration or 'unknown'}); "
                  f"{s.events_total:,} events, {s.bids_total:,} bids; "
                  f"{s.expired_reservations:,} reservations expired, "
                  f"{s.in_doubt_reservations:,} in doubt now, {s.late_wins:,} late wins")
    t = Table(title="stage latency per batch (us)")
    for col in ("stage", "batches", "mean", "p50", "p99"):
        t.add_column(col)
    for st in s.stages:
        t.add_row(st.stage, f"{st.count:,}", f"{st.mean_us:.0f}", f"{st.p50_us:.0f}",
                  f"{st.p99_us:.0f}")
    console.print(t)
    if campaigns:
        t = Table(title=f"top {campaigns} campaigns by spend (currency units)")
        shared = ("global spent", "leased", "lease here") if s.shared_store else ()
        for col in ("campaign", "active", "budget", "spent", "reserved", *shared, "pacing"):
            t.add_column(col)
        by_spend = sorted(s.campaigns, key=lambda c: -(c.spent_micros + c.reserved_micros
                                                        + c.global_spent_micros))
        for c in by_spend[:campaigns]:
            books = (c.global_spent_micros, c.global_leased_micros, c.lease_micros) \
                if shared else ()
            t.add_row(c.campaign_id, "yes" if c.active else "no", f"{c.budget_micros / 1e6:.2f}",
                      f"{c.spent_micros / 1e6:.4f}", f"{c.reserved_micros / 1e6:.4f}",
                      *(f"{m / 1e6:.4f}" for m in books), f"{c.pacing_multiplier:.2f}")
        console.print(t)


@app.command()
def reload(
    world: str = typer.Argument("", help="World directory to serve (default: the current one)."),
    target: str = AdminTargetOpt,
    token: str = TokenOpt,
    tls_ca: Path = TlsCaOpt,
    tls_cert: Path = TlsCertOpt,
    tls_key: Path = TlsKeyOpt,
) -> None:
    """Load a world into a running server: validated, warmed up, swapped in atomically."""
    from adbid.v1 import admin_pb2

    path = str(Path(world).resolve()) if world else ""
    r = _admin(target, token, "Reload", admin_pb2.ReloadRequest(world_path=path), 120,
               tls=(tls_ca, tls_cert, tls_key))
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
    tls_ca: Path = TlsCaOpt,
    tls_cert: Path = TlsCertOpt,
    tls_key: Path = TlsKeyOpt,
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
    c = _admin(target, token, "UpdateCampaign", req, tls=(tls_ca, tls_cert, tls_key)).campaign
    console.print(f"{c.campaign_id}: {'active' if c.active else 'paused'}, budget "
                  f"{c.budget_micros / 1e6:.2f}, spent {c.spent_micros / 1e6:.4f}, reserved "
                  f"{c.reserved_micros / 1e6:.4f}")


app.command()(bench)
app.command("simulate")(simulate_command)


if __name__ == "__main__":
    app()
