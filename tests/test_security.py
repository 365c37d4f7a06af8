"""TLS, mutual TLS and the Admin service's separation, with certificates made here."""

from __future__ import annotations

import datetime
import ipaddress

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from adbid.v1 import admin_pb2, admin_pb2_grpc, bidder_pb2_grpc
from adbid.v1 import bidder_pb2 as pb
from adbid.world.demo_traffic import make_events


def issue(name: str, ca: tuple | None = None, server: bool = False):
    """(key, cert): self-signed CA when `ca` is None, else signed by it."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (x509.CertificateBuilder().subject_name(subject)
               .issuer_name(ca[1].subject if ca else subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca is None, path_length=None), True))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            False)
    cert = builder.sign(ca[0] if ca else key, hashes.SHA256())
    return key, cert


def write_pem(path, key=None, cert=None):
    if key is not None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    else:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    ca = issue("adbid test CA")
    server = issue("localhost", ca, server=True)
    client = issue("exchange-1", ca)
    other_ca = issue("someone else")
    stranger = issue("stranger", other_ca)
    files = {"ca": write_pem(d / "ca.pem", cert=ca[1])}
    for name, (key, cert) in (("server", server), ("client", client), ("stranger", stranger)):
        files[f"{name}_key"] = write_pem(d / f"{name}.key", key=key)
        files[f"{name}_cert"] = write_pem(d / f"{name}.pem", cert=cert)
    return files


def one_bid(channel) -> int:
    events = make_events(4, np.random.default_rng(0), n_users=2_000, test=True)
    return len(bidder_pb2_grpc.BidderStub(channel).Bid(pb.BidRequest(events=events),
                                                       timeout=5).decisions)


def tls_channel(target, pki, client: str | None = None):
    creds = grpc.ssl_channel_credentials(
        root_certificates=pki["ca"].read_bytes(),
        private_key=pki[f"{client}_key"].read_bytes() if client else None,
        certificate_chain=pki[f"{client}_cert"].read_bytes() if client else None)
    return grpc.secure_channel(target, creds)


def test_tls_serves_tls_clients_only(server_factory, pki):
    s = server_factory(tls_cert=pki["server_cert"], tls_key=pki["server_key"])
    with tls_channel(s.target, pki) as ch:
        assert one_bid(ch) == 4
    with grpc.insecure_channel(s.target) as ch, pytest.raises(grpc.RpcError) as err:
        one_bid(ch)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls_wants_a_client_certificate_from_our_ca(server_factory, pki):
    s = server_factory(tls_cert=pki["server_cert"], tls_key=pki["server_key"],
                       tls_client_ca=pki["ca"])
    with tls_channel(s.target, pki, client="client") as ch:
        assert one_bid(ch) == 4
    for client in (None, "stranger"):
        with tls_channel(s.target, pki, client=client) as ch, pytest.raises(grpc.RpcError) as err:
            one_bid(ch)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE


def test_admin_lives_on_its_own_port_by_default(server_factory):
    s = server_factory(admin_port=0)
    assert s.server.admin_port not in (0, s.server.port)
    with grpc.insecure_channel(s.target) as ch, pytest.raises(grpc.RpcError) as err:
        admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), timeout=5)
    assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with grpc.insecure_channel(f"127.0.0.1:{s.server.admin_port}") as ch:
        assert admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), timeout=5).ads > 0
        with pytest.raises(grpc.RpcError) as err:
            one_bid(ch)
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_admin_token_is_required_when_set(server_factory):
    s = server_factory(admin_token="s3cret")
    with grpc.insecure_channel(s.target) as ch:
        stub = admin_pb2_grpc.AdminStub(ch)
        for md in ((), (("authorization", "Bearer wrong"),), (("authorization", "s3cret"),)):
            with pytest.raises(grpc.RpcError) as err:
                stub.Status(admin_pb2.StatusRequest(), timeout=5, metadata=md)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        ok = stub.Status(admin_pb2.StatusRequest(), timeout=5,
                         metadata=(("authorization", "Bearer s3cret"),))
        assert ok.ads > 0


def test_admin_on_a_public_main_port_without_a_token_is_refused(tiny_world_dir, tmp_path):
    import asyncio

    from conftest import server_config

    from adbid.server import BidServer

    cfg = server_config(tiny_world_dir, tmp_path / "l", host="0.0.0.0", admin_port=-1)
    with pytest.raises(OSError, match="admin-token"):
        asyncio.run(BidServer(cfg).start())


def test_admin_on_its_own_port_speaks_the_same_tls(server_factory, pki):
    """With --tls-cert, the Admin port is TLS too: its bearer token never travels in clear."""
    s = server_factory(tls_cert=pki["server_cert"], tls_key=pki["server_key"], admin_port=0,
                       admin_token="s3cret")
    admin = f"localhost:{s.server.admin_port}"
    with tls_channel(admin, pki) as ch:
        ok = admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), timeout=5,
                                                 metadata=(("authorization", "Bearer s3cret"),))
        assert ok.ads > 0
    with grpc.insecure_channel(admin) as ch, pytest.raises(grpc.RpcError) as err:
        admin_pb2_grpc.AdminStub(ch).Status(admin_pb2.StatusRequest(), timeout=5,
                                            metadata=(("authorization", "Bearer s3cret"),))
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE


@pytest.mark.parametrize("with_token, with_tls", [(True, False), (False, True)])
def test_admin_off_loopback_needs_both_tls_and_a_token(tiny_world_dir, tmp_path, pki,
                                                       with_token, with_tls):
    """Refused before anything binds (so nothing here listens off loopback)."""
    import asyncio

    from conftest import server_config

    from adbid.server import BidServer

    tls = {"tls_cert": pki["server_cert"], "tls_key": pki["server_key"]} if with_tls else {}
    cfg = server_config(tiny_world_dir, tmp_path / "l", admin_host="0.0.0.0", admin_port=0,
                        admin_token="s3cret" if with_token else "", **tls)
    with pytest.raises(OSError, match="needs both --admin-token and TLS"):
        asyncio.run(BidServer(cfg).start())


def test_metrics_stay_on_loopback_whatever_the_grpc_host(server_factory):
    """/metrics shows budgets without auth: it binds to --metrics-host (loopback by
    default), not to --host. (127.0.0.2 is loopback too, so nothing leaves the machine.)"""
    s = server_factory(host="127.0.0.2", metrics_port=-1)
    assert s.server._metrics_http.server_address[0] == "127.0.0.1"
    s = server_factory(host="127.0.0.2", metrics_port=-1, metrics_host="127.0.0.3")
    assert s.server._metrics_http.server_address[0] == "127.0.0.3"
