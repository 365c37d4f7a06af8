"""The floor under any Python gRPC server here: an echo server that does nothing.

A grpc.aio server (like adbid's) answers every call with fixed bytes of the size of a
columnar answer; a closed-loop client (like `adbid bench`) sends bytes of the size of
a columnar request, from another process on the same cores. Reported: calls/s, and
the server's CPU time per call, read from /proc. Divided by the batch size, that CPU
is the part of adbid's overhead per event that gRPC itself takes, before adbid runs
a line. --rpc stream does the same with one bidirectional stream per caller, a
message each way per batch, as BidStream does.

    python benchmarks/grpc_floor.py [--batch 256] [--duration-s 8] [--runs 3] [--rpc stream]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, write

METHOD, STREAM = "/floor.Echo/Call", "/floor.Echo/Stream"


async def serve(answer_bytes: int) -> None:
    answer = b"x" * answer_bytes

    async def call(request: bytes, context) -> bytes:
        return answer

    async def stream(requests, context):
        async for _ in requests:
            yield answer

    server = grpc.aio.server()
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        "floor.Echo", {"Call": grpc.unary_unary_rpc_method_handler(call),
                       "Stream": grpc.stream_stream_rpc_method_handler(stream)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(port, flush=True)
    await server.wait_for_termination()


async def load(port: int, request_bytes: int, concurrency: int, duration_s: float,
               rpc: str, latencies: list[float] | None = None) -> float:
    """Calls a second, closed loop; each call's seconds appended to `latencies` if given."""
    request = b"y" * request_bytes
    channels = [grpc.aio.insecure_channel(f"127.0.0.1:{port}", options=[("floor.channel", i)])
                for i in range(concurrency)]
    done = 0
    stop_at = time.perf_counter() + duration_s

    async def caller(channel) -> None:
        nonlocal done
        if rpc == "stream":
            call = channel.stream_stream(STREAM)()
            while time.perf_counter() < stop_at:
                await call.write(request)
                await call.read()
                done += 1
            await call.done_writing()
            return
        call = channel.unary_unary(METHOD)
        while (t0 := time.perf_counter()) < stop_at:
            await call(request, timeout=5)
            done += 1
            if latencies is not None:
                latencies.append(time.perf_counter() - t0)

    await asyncio.gather(*(caller(ch) for ch in channels))
    await asyncio.gather(*(ch.close() for ch in channels))
    return done / duration_s


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_caller_p50_ms(batch: int, duration_s: float) -> float:
    """The echo server's p50 at one caller (unary calls of a batch's sizes), in ms."""
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(55 * batch)],
                              stdout=subprocess.PIPE, text=True)
    try:
        port = int(server.stdout.readline())
        asyncio.run(load(port, 94 * batch, 1, 1.0, "unary"))  # warm
        latencies: list[float] = []
        asyncio.run(load(port, 94 * batch, 1, duration_s, "unary", latencies))
    finally:
        server.terminate()
        server.wait()
    return statistics.median(latencies) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--duration-s", type=float, default=8.0)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rpc", choices=("unary", "stream"), default="unary")
    ap.add_argument("--serve", type=int, default=0, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.serve:
        asyncio.run(serve(a.serve))
        return
    # Sizes of a demo-world batch on the columnar wire: ~94 bytes an event in, ~55 out.
    request_bytes, answer_bytes = 94 * a.batch, 55 * a.batch
    runs = []
    for _ in range(a.runs):
        server = subprocess.Popen([sys.executable, __file__, "--serve", str(answer_bytes)],
                                  stdout=subprocess.PIPE, text=True)
        try:
            port = int(server.stdout.readline())
            asyncio.run(load(port, request_bytes, a.concurrency, 1.0, a.rpc))  # warm
            before = cpu_s(server.pid)
            rate = asyncio.run(load(port, request_bytes, a.concurrency, a.duration_s, a.rpc))
            cpu_per_call = (cpu_s(server.pid) - before) / (rate * a.duration_s)
        finally:
            server.terminate()
            server.wait()
        runs.append({"calls_per_s": rate, "server_cpu_us_per_call": cpu_per_call * 1e6,
                     "server_cpu_us_per_event": cpu_per_call * 1e6 / a.batch})
        print(f"{a.rpc}: {rate:,.0f} calls/s, server CPU {cpu_per_call * 1e6:.0f} us a call = "
              f"{cpu_per_call * 1e6 / a.batch:.2f} us an event of a batch of {a.batch}")
    per_event = [r["server_cpu_us_per_event"] for r in runs]
    print(f"median {statistics.median(per_event):.2f} us an event "
          f"({min(per_event):.2f}-{max(per_event):.2f}) over {a.runs} runs")
    result = {"machine": machine(), "batch": a.batch, "rpc": a.rpc,
              "request_bytes": request_bytes, "answer_bytes": answer_bytes, "runs": runs}
    print(f"-> {write(f'grpc_floor_{a.rpc}', result)}")


if __name__ == "__main__":
    main()
