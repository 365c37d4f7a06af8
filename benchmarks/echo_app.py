"""The HTTP floor: an ASGI app that reads a request body and answers a fixed bid response
of adbid's size, and nothing else. Served by uvicorn (httptools) and by granian in
benchmarks/openrtb.py, the same way adbid's OpenRTB edge is served."""

from __future__ import annotations

import json

ANSWER = json.dumps({"id": "x", "bidid": "0" * 16, "cur": "USD", "seatbid": [
    {"seat": "adbid", "bid": [{"id": "b", "impid": "1", "price": 1.5, "adm": "x" * 1100}]}],
}).encode()
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(ANSWER)).encode())]


async def app(scope, receive, send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": ANSWER})
