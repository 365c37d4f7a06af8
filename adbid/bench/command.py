"""`adbid bench`: load a running server over gRPC, report throughput, latency and stages."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from adbid.config import default_admin_target, default_target

console = Console()
TargetOpt = typer.Option(default_target(), envvar="ADBID_TARGET", help="Bidder address.")
AdminTargetOpt = typer.Option(default_admin_target(), envvar="ADBID_ADMIN_TARGET",
                              help="Admin address (the server's --admin-host:--admin-port).")


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

    from adbid import logs
    from adbid.bench import report as bench_report
    from adbid.bench.loadgen import RPCS, WIRES, LoadSpec, run, server_stages
    from adbid.bench.loadgen import sweep as rate_sweep

    logs.setup("text", False)
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
    except Exception as exc:
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
