"""Transport security of the gRPC port: TLS, mutual TLS, and what counts as loopback."""

from __future__ import annotations

import ipaddress

import grpc

from adbid.config import ServerConfig


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def tls_credentials(cfg: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS when a certificate is configured; mutual TLS when a client CA is too."""
    if not cfg.tls_cert and not cfg.tls_key:
        if cfg.tls_client_ca:
            raise OSError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if not (cfg.tls_cert and cfg.tls_key):
        raise OSError("TLS needs both --tls-cert and --tls-key")
    ca = cfg.tls_client_ca.read_bytes() if cfg.tls_client_ca else None
    return grpc.ssl_server_credentials([(cfg.tls_key.read_bytes(), cfg.tls_cert.read_bytes())],
                                       root_certificates=ca, require_client_auth=ca is not None)
