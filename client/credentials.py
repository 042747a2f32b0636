"""What a client shows a server that has `tls:` or `auth:` on: the CA that signed the server's certificate
(turns TLS on), an optional client certificate (mutual TLS) and a bearer token, for every protocol."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Credentials"]


@dataclass(frozen=True)
class Credentials:
    """`tls_ca`: PEM CA bundle that verifies the server (TLS on when set); `tls_cert`/`tls_key`: the
    client's PEM certificate and key for mutual TLS; `token`: sent as `Authorization: Bearer <token>`
    (REST, gRPC metadata) or `RpcMeta.authentication_data` (bRPC)."""

    tls_ca: Path | str | None = None
    tls_cert: Path | str | None = None
    tls_key: Path | str | None = None
    token: str | None = None

    def __post_init__(self) -> None:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("give tls_cert and tls_key together (the client certificate and its key)")
        if self.tls_cert is not None and self.tls_ca is None:
            raise ValueError("a client certificate (tls_cert) needs tls_ca, the CA that verifies the server")

    @property
    def tls(self) -> bool:
        return self.tls_ca is not None

    def ssl_context(self) -> ssl.SSLContext | None:
        """A client TLS context verifying the server against `tls_ca` (None when TLS is off)."""
        if not self.tls:
            return None
        context = ssl.create_default_context(cafile=str(self.tls_ca))
        if self.tls_cert is not None:
            context.load_cert_chain(str(self.tls_cert), str(self.tls_key))
        return context

    def http_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def grpc_metadata(self) -> tuple[tuple[str, str], ...] | None:
        return (("authorization", f"Bearer {self.token}"),) if self.token else None

    def brpc_auth(self) -> bytes:
        return self.token.encode() if self.token else b""

    def grpc_channel(self, target: str, options: list[tuple[str, Any]], aio: bool = False) -> Any:
        """A gRPC channel to `target`: TLS-verified against `tls_ca` when set, plain otherwise."""
        import grpc

        module = grpc.aio if aio else grpc
        if not self.tls:
            return module.insecure_channel(target, options=options)
        read = lambda path: Path(path).read_bytes() if path is not None else None  # noqa: E731
        credentials = grpc.ssl_channel_credentials(read(self.tls_ca), read(self.tls_key), read(self.tls_cert))
        return module.secure_channel(target, credentials, options=options)

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"


def add_credential_arguments(parser: Any) -> None:
    """`--tls-ca`, `--tls-cert`, `--tls-key`, `--token` for a CLI that talks to a server."""
    parser.add_argument("--tls-ca", type=Path, metavar="PEM",
                        help="speak TLS, verifying the server with this CA bundle (server with tls:)")
    parser.add_argument("--tls-cert", type=Path, metavar="PEM", help="client certificate, for mutual TLS")
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="the client certificate's key")
    parser.add_argument("--token", metavar="TOKEN", default=None,
                        help="bearer token (server with auth:); default: $RESNEST_TOKEN")


def credentials_from_arguments(args: Any) -> Credentials:
    """The Credentials the parsed arguments ask for (token from --token or $RESNEST_TOKEN)."""
    import os

    return Credentials(tls_ca=args.tls_ca, tls_cert=args.tls_cert, tls_key=args.tls_key,
                       token=args.token or os.environ.get("RESNEST_TOKEN") or None)
