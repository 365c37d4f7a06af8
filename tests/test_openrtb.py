"""OpenRTB 2.6 against a real `adbid serve` process over real HTTP: the request corpus in
tests/openrtb/ (each file a request and its expected outcome), the notice round trip into
the ledger, and bad input."""

from __future__ import annotations

import gzip
import http.client
import json
import re
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adbid.v1 import admin_pb2, admin_pb2_grpc

BIN = Path(sys.executable).parent / "adbid"
CORPUS = sorted((Path(__file__).parent / "openrtb").glob("*.json"))


class Served:
    def __init__(self, proc: subprocess.Popen, log: Path, http_port: int, admin_port: int):
        self.proc, self.log, self.http_port, self.admin_port = proc, log, http_port, admin_port

    def post(self, body: bytes, headers: dict | None = None,
             path: str = "/openrtb2/bid") -> tuple[int, dict, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=10)
        try:
            conn.request("POST", path, body, {"Content-Type": "application/json",
                                              **(headers or {})})
            r = conn.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            conn.close()

    def get(self, url: str) -> tuple[int, bytes]:
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
        try:
            conn.request("GET", f"{parts.path}?{parts.query}")
            r = conn.getresponse()
            return r.status, r.read()
        finally:
            conn.close()

    def status(self) -> admin_pb2.StatusResponse:
        with grpc.insecure_channel(f"127.0.0.1:{self.admin_port}") as ch:
            return admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), timeout=5)

    def reserved(self) -> int:
        return sum(c.reserved_micros for c in self.status().campaigns)

    def spent(self) -> int:
        return sum(c.spent_micros for c in self.status().campaigns)


def start_server(world: Path, ledger: Path, log: Path, *flags: str) -> Served:
    with log.open("w") as f:
        proc = subprocess.Popen([BIN, "serve", "--world", str(world), "--ledger", str(ledger),
                                 "--port", "0", "--metrics-port", "0", "--admin-port", "0",
                                 "--openrtb-port", "-1", "--log-format", "text", *flags],
                                stderr=f, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = log.read_text()
        http_port = re.search(r"OpenRTB 2\.6 on http://127\.0\.0\.1:(\d+)", text)
        admin = re.search(r"admin on 127\.0\.0\.1:(\d+)", text)
        if http_port and admin:
            return Served(proc, log, int(http_port.group(1)), int(admin.group(1)))
        assert proc.poll() is None, text
        time.sleep(0.05)
    proc.kill()
    raise AssertionError(f"server did not start:\n{log.read_text()}")


def stop_server(s: Served) -> None:
    s.proc.terminate()
    try:
        s.proc.wait(20)
    except subprocess.TimeoutExpired:
        s.proc.kill()
        s.proc.wait()


@pytest.fixture(scope="module")
def served(tiny_world_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("openrtb")
    s = start_server(tiny_world_dir, tmp / "ledger", tmp / "serve.log")
    yield s
    stop_server(s)


def case_body(request) -> tuple[bytes, dict]:
    if isinstance(request, str):  # a malformed request, as its text
        return request.encode(), {}
    request = dict(request)
    headers = {}
    if request.pop("_gzip", False):
        headers["Content-Encoding"] = "gzip"
        return gzip.compress(json.dumps(request).encode()), headers
    if ctype := request.pop("_content_type", None):
        headers["Content-Type"] = ctype
    return json.dumps(request).encode(), headers


def test_the_corpus_has_at_least_twenty_requests():
    assert len(CORPUS) >= 20


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: p.stem)
def test_corpus_request_gets_its_expected_outcome(served, tiny_world, path):
    case = json.loads(path.read_text())
    expect = case["expect"]
    body, headers = case_body(case["request"])
    reserved_before = served.reserved()
    status, reply_headers, reply = served.post(body, headers)
    assert status == expect["status"], reply[:300]
    if "contains" in expect:
        assert expect["contains"] in reply.decode()
    if status == 204:
        assert reply == b""
        assert reply_headers.get("x-openrtb-version") == "2.6"
    if status != 200:
        return
    assert reply_headers["x-openrtb-version"] == "2.6"
    response = json.loads(reply)
    request = case["request"]
    assert response["id"] == request["id"] and response["bidid"]
    bids = [b for sb in response["seatbid"] for b in sb["bid"]]
    assert all(sb["seat"] == "adbid" for sb in response["seatbid"])
    if "bids" in expect:
        assert len(bids) == expect["bids"]
    assert len(bids) >= expect.get("min_bids", 1)
    assert len({b["impid"] for b in bids}) == len(bids)  # one bid per imp at most
    imp_ids = {imp["id"] for imp in request["imp"]}
    assert {b["impid"] for b in bids} <= imp_ids
    if "impids" in expect:
        assert sorted(b["impid"] for b in bids) == sorted(expect["impids"])
    assert response["cur"] == expect.get("cur", "USD")
    for b in bids:
        assert b["price"] >= expect.get("min_price", 0) and b["price"] > 0
        assert b["adm"] and b["crid"] and b["cid"] and b["adomain"]
        assert "${AUCTION_PRICE}" in b["burl"] and "${AUCTION_PRICE}" in b["nurl"]
        assert "${AUCTION_LOSS}" in b["lurl"] and "${AUCTION_MIN_TO_WIN}" in b["lurl"]
        assert not set(b.get("cat", [])) & set(expect.get("no_cats", []))
        assert not set(b["adomain"]) & set(expect.get("no_adomains", []))
        assert b["cid"] not in expect.get("no_campaigns", [])
        if "size" in expect:
            assert [b["w"], b["h"]] == expect["size"]
        assert b["mtype"] == expect.get("mtypes", {}).get(b["impid"], expect.get("mtype", 1))
        if b["mtype"] == 2:
            assert b["adm"].startswith("<VAST") and "${AUCTION_PRICE}" in b["adm"]
        if "adm_contains" in expect:
            assert expect["adm_contains"] in b["adm"]
        if "dealid_in" in expect:
            assert b["dealid"] in expect["dealid_in"]
            assert b["dealid"] == f"deal-{b['cid'][1:]}"  # the deal of the campaign that bid
        if "campaigns_in" in expect:
            assert b["cid"] in expect["campaigns_in"]
        if "no_attrs" in expect:
            row = tiny_world.ad_creative_ids.tolist().index(b["crid"])
            assert int(tiny_world.ad_attrs[row]) & sum(1 << a for a in expect["no_attrs"]) == 0
    if expect.get("test"):  # real bids, nothing booked
        assert served.reserved() == reserved_before
    elif request.get("test") != 1:
        assert served.reserved() > reserved_before


def bid_once(served: Served, rid: str, **extra) -> dict:
    request = {"id": rid, "tmax": 500, "at": 1,
               "imp": [{"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 0.01}],
               "site": {"domain": "news.example", "keywords": "football soccer"},
               "device": {"devicetype": 2, "geo": {"country": "USA"}},
               "user": {"buyeruid": "u0000042"}, **extra}
    status, _, reply = served.post(json.dumps(request).encode())
    assert status == 200, reply
    return json.loads(reply)["seatbid"][0]["bid"][0]


def fill(url: str, price: float | str = "", currency: str = "USD") -> str:
    return (url.replace("${AUCTION_PRICE}", str(price)).replace("${AUCTION_CURRENCY}", currency)
            .replace("${AUCTION_ID}", "a").replace("${AUCTION_IMP_ID}", "1")
            .replace("${AUCTION_BID_ID}", "b").replace("${AUCTION_LOSS}", "102")
            .replace("${AUCTION_MIN_TO_WIN}", "1.5"))


def test_billing_books_the_spend_once_and_a_loss_releases(served):
    spent, reserved = served.spent(), served.reserved()
    won = bid_once(served, "notice-won")
    lost = bid_once(served, "notice-lost")
    assert served.reserved() > reserved
    clearing = round(won["price"] / 2, 6)
    assert served.get(fill(won["nurl"], clearing))[0] == 204  # counted, books nothing
    assert served.spent() == spent
    assert served.get(fill(won["burl"], clearing))[0] == 204
    booked = served.spent() - spent
    assert booked == -(-round(clearing * 1e6) // 1000)  # ceil(clearing micros / 1000)
    assert served.get(fill(won["burl"], clearing))[0] == 204  # duplicate: nothing more
    assert served.spent() - spent == booked
    assert served.get(fill(lost["lurl"]))[0] == 204
    assert served.reserved() == reserved


def test_notices_that_do_not_match_are_refused_and_book_nothing(served):
    spent = served.spent()
    b = bid_once(served, "notice-bad")
    tampered = fill(b["burl"], b["price"]).replace("&b=", "&b=9")
    assert served.get(tampered)[0] == 403
    made_up = re.sub(r"r=[^&]+", "r=nobody%2F1", fill(b["burl"], b["price"]))
    assert served.get(made_up)[0] == 403
    assert served.get(fill(b["burl"], b["price"] * 3))[0] == 400  # above the bid
    assert served.spent() == spent
    test_bid = bid_once(served, "notice-test", test=1)
    assert served.get(fill(test_bid["burl"], test_bid["price"]))[0] == 204  # ignored
    assert served.spent() == spent


def test_a_billing_notice_in_another_currency_settles_at_most_the_bid(served):
    spent = served.spent()
    b = bid_once(served, "notice-eur", cur=["EUR"])
    assert served.get(fill(b["burl"], b["price"], "EUR"))[0] == 204  # the exchange echoes it
    booked = served.spent() - spent
    assert booked > 0
    # An exchange that leaves ${AUCTION_CURRENCY} out: the price is in the bid's currency.
    spent = served.spent()
    b = bid_once(served, "notice-eur-2", cur=["EUR"])
    half = round(b["price"] / 2, 6)
    url = fill(b["burl"], half).replace("&c=USD", "&c=${AUCTION_CURRENCY}")
    assert served.get(url)[0] == 204
    in_usd = int(half * 1e6 / 0.92)  # EUR -> USD micros, down
    assert abs((served.spent() - spent) - -(-in_usd // 1000)) <= 1


def test_bad_bodies_get_clear_statuses_and_the_server_keeps_serving(served):
    reserved = served.reserved()
    big = json.dumps({"id": "x", "imp": [{"id": "1"}], "pad": "a" * 300_000}).encode()
    assert served.post(big)[0] == 413
    bomb = gzip.compress(b'{"id": "x", "pad": "' + b"a" * 5_000_000 + b'"}')
    assert served.post(bomb, {"Content-Encoding": "gzip"})[0] == 413
    assert served.post(b"\x1f\x8b not gzip", {"Content-Encoding": "gzip"})[0] == 400
    assert served.post(b'{"id": "\xff\xfe", "imp": [{"id": "1"}]}')[0] == 400
    nested = b'{"id": "x", "imp": [{"id": "1", "banner": {}}], "ext": ' + b"[" * 5000 + \
        b"]" * 5000 + b"}"
    status, _, reply = served.post(nested)
    assert status == 400 and b"nested" in reply
    many = {"id": "x", "imp": [{"id": str(i), "banner": {}} for i in range(10_000)]}
    assert served.post(json.dumps(many).encode())[0] == 413  # over the body limit
    many["imp"] = many["imp"][:100]
    status, _, reply = served.post(json.dumps(many).encode())
    assert status == 400 and b"at most 64" in reply
    assert served.post(b"{}", {"Content-Type": ""})[0] == 415
    assert served.reserved() == reserved  # nothing reserved for a rejected request
    bid_once(served, "still-serving")


def test_slow_headers_and_a_slow_body_time_out(tiny_world_dir, tmp_path):
    s = start_server(tiny_world_dir, tmp_path / "ledger", tmp_path / "serve.log",
                     "--openrtb-body-timeout-s", "0.3", "--openrtb-header-timeout-s", "0.5")
    try:
        for first in (b"", b"POST /openrtb2/bid HTTP/1.1\r\nHost: x\r\n"):  # then nothing
            with socket.create_connection(("127.0.0.1", s.http_port), timeout=5) as sock:
                sock.sendall(first)
                t0 = time.monotonic()
                assert sock.recv(4096) == b""  # closed by the server, no answer
                assert 0.3 < time.monotonic() - t0 < 3
        with socket.create_connection(("127.0.0.1", s.http_port), timeout=5) as sock:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            time.sleep(0.8)  # idle between requests: the keep-alive timeout's business
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(4096).startswith(b"HTTP/1.1 200")
        with socket.create_connection(("127.0.0.1", s.http_port), timeout=5) as sock:
            sock.sendall(b"POST /openrtb2/bid HTTP/1.1\r\nHost: x\r\n"
                         b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
            reply = sock.recv(4096)
        assert reply.startswith(b"HTTP/1.1 408")
        bid_once(s, "after-slow")
    finally:
        stop_server(s)


def test_nbr_mode_and_the_connection_limit(tiny_world_dir, tmp_path):
    """--openrtb-nobid nbr answers a no-bid as 200 with nbr; idle keep-alive connections
    beyond --openrtb-max-connections are refused (503), and the server keeps serving."""
    s = start_server(tiny_world_dir, tmp_path / "ledger", tmp_path / "serve.log",
                     "--openrtb-nobid", "nbr", "--openrtb-max-connections", "4")
    try:
        request = {"id": "n1", "tmax": 500,
                   "imp": [{"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 9999.0}]}
        status, _, reply = s.post(json.dumps(request).encode())
        assert status == 200 and json.loads(reply) == {"id": "n1", "nbr": 0}
        status, _, reply = s.post(json.dumps({**request, "tmax": 3}).encode())
        assert status == 200 and json.loads(reply)["nbr"] == 15  # insufficient time
        status, _, reply = s.post(b"{not json")
        assert status == 400 and json.loads(reply)["nbr"] == 2
        # uvicorn counts the connection asking too: 3 held open leave no room for a 4th.
        idle = [socket.create_connection(("127.0.0.1", s.http_port)) for _ in range(3)]
        try:
            for sock in idle:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(4096).startswith(b"HTTP/1.1 200")
            refused = s.post(json.dumps(request).encode())[0]
            assert refused == 503
        finally:
            for sock in idle:
                sock.close()
        time.sleep(0.2)
        assert s.post(json.dumps(request).encode())[0] == 200
    finally:
        stop_server(s)


def test_keep_alive_connections_are_served_with_nodelay(server_factory):
    """An answer is written in two parts (head, body); without TCP_NODELAY the second waits
    for the client's delayed ACK, 40 ms on every keep-alive request after the first."""
    import socket as socket_module

    server = server_factory()
    conn = http.client.HTTPConnection("127.0.0.1", server.server.openrtb_port, timeout=5)
    conn.request("GET", "/healthz")
    assert conn.getresponse().read() == b""

    async def nodelay() -> list[int]:
        state = server.server.openrtb._server.server_state
        return [c.transport.get_extra_info("socket").getsockopt(
            socket_module.IPPROTO_TCP, socket_module.TCP_NODELAY) for c in state.connections]

    try:
        flags = server.call(nodelay())
        assert flags and all(flags)
    finally:
        conn.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(["id", "imp", "banner", "w", "h", "format", "bidfloor",
                                       "bidfloorcur", "site", "app", "device", "user", "regs",
                                       "tmax", "at", "cur", "bcat", "badv", "test", "pmp",
                                       "video", "ext", "gdpr", "consent", "geo", "country"]),
                      children, max_size=6),
    max_leaves=30)


def test_fuzzed_json_structures_get_a_clear_answer_and_reserve_nothing_when_refused(served):
    """Bounded: random JSON shaped like bid requests (right and wrong types mixed) never
    gets a 5xx, and a refused one reserves nothing."""
    seen: Counter = Counter()

    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=json_values)
    def one(body):
        reserved = served.reserved()
        status, _, _ = served.post(json.dumps(body).encode())
        seen[status] += 1
        assert status in (200, 204, 400), status
        if status == 400:
            assert served.reserved() == reserved

    one()
    assert seen[400] > 0
    bid_once(served, "after-fuzz")


def test_a_private_auction_is_retrieved_among_its_deals_ads(tiny_world_dir, tiny_world,
                                                            tmp_path):
    """With one candidate retrieved an event, the catalogue's best ad is seldom a deal's;
    a private auction is searched among its deals' campaigns' ads, so it still bids where
    the catalogue's best ad belongs to no deal (where a plain search could not)."""
    from adbid.stages.lookup import ContextEncoder
    from adbid.stages.retrieval import Retriever

    deal_rows = {0, 6, 12, 18}
    encoder, retriever = ContextEncoder(tiny_world), Retriever(tiny_world.ad_index, 1, 1)
    s = start_server(tiny_world_dir, tmp_path / "ledger", tmp_path / "serve.log",
                     "--top-k", "1")
    try:
        deals = [{"id": f"deal-{c:04d}"} for c in sorted(deal_rows)]
        beyond_top = 0
        for i, words in enumerate(w for pair in TOPICS for w in pair):
            request = {"id": f"p{i}", "tmax": 500,
                       "imp": [{"id": "1", "banner": {"w": 300, "h": 250}, "bidfloor": 0.01,
                                "pmp": {"private_auction": 1, "deals": deals}}],
                       "site": {"domain": "news.example", "keywords": words}}
            status, _, reply = s.post(json.dumps(request).encode())
            if status != 200:
                continue
            bid = json.loads(reply)["seatbid"][0]["bid"][0]
            assert bid["dealid"] == f"deal-{bid['cid'][1:]}"
            best = retriever.search(encoder.embeddings([words]))[0, 0]
            beyond_top += int(tiny_world.ad_campaign[best]) not in deal_rows
        assert beyond_top >= 1
    finally:
        stop_server(s)


TOPICS = (("football soccer", "tennis racket"), ("running marathon", "cycling bike"),
          ("recipes cooking", "wine vineyard"), ("coffee espresso", "vegan plantbased"))


def test_imp_exp_holds_the_reservation_past_the_ttl(tiny_world_dir, tmp_path):
    """imp.exp (seconds the exchange may still bill) holds a bid's reservation at least that
    long; a bid without it is released at the server's reservation TTL (1 s here, with no
    late-win window)."""
    s = start_server(tiny_world_dir, tmp_path / "ledger", tmp_path / "serve.log",
                     "--reservation-ttl-s", "1", "--late-win-window-s", "0")
    try:
        held = bid_once(s, "exp-held", imp=[{"id": "1", "banner": {"w": 300, "h": 250},
                                              "bidfloor": 0.01, "exp": 3600}])
        bid_once(s, "exp-default")
        deadline = time.monotonic() + 10
        want = -(-round(held["price"] * 1e6) // 1000)  # its impression cost, micros
        while s.reserved() != want and time.monotonic() < deadline:
            time.sleep(0.2)
        assert s.reserved() == want
        time.sleep(1.5)  # past the TTL again: still held
        assert s.reserved() == want
    finally:
        stop_server(s)
