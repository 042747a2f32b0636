"""TLS contexts and bearer tokens for every front door, from the config's `tls:` and `auth:` sections.

One token set serves REST (`Authorization: Bearer <token>`), gRPC (metadata `authorization`, same form) and
bRPC (`RpcMeta.authentication_data`: the token itself, or `Bearer <token>`). Tokens are compared in constant
time. Health checks stay open so that load balancers and Kubernetes probes need no secret."""

from __future__ import annotations

import hmac
import logging
import ssl
from pathlib import Path

from protocol.endpoints import is_loopback
from serving.config_schema import AuthConfig, TlsConfig

log = logging.getLogger(__name__)

HEALTH_PATHS = {"/health/live": "live", "/health/ready": "ready", "/v2/health/live": "live",
                "/v2/health/ready": "ready"}
OPEN_GRPC_METHODS = frozenset({"/inference.GRPCInferenceService/ServerLive",
                               "/inference.GRPCInferenceService/ServerReady",
                               "/inference.GRPCInferenceService/ModelReady"})


def is_open_path(path: str) -> bool:
    """HTTP paths that need no token: the health checks, and the Open Inference Protocol's model readiness
    (`/v2/models/{name}[/versions/{v}]/ready`, open on gRPC too)."""
    return path in HEALTH_PATHS or (path.startswith("/v2/models/") and path.endswith("/ready"))


class TokenSet:
    """The accepted bearer tokens; an empty set accepts every request (auth off)."""

    def __init__(self, tokens: list[str]):
        self._tokens = [t.encode() for t in tokens]

    @classmethod
    def load(cls, auth: AuthConfig) -> TokenSet:
        """Read `auth.token_file` (one token per line, blank lines and # comments skipped)."""
        if auth.token_file is None:
            return cls([])
        lines = [line.strip() for line in Path(auth.token_file).read_text().splitlines()]
        tokens = [line for line in lines if line and not line.startswith("#")]
        if not tokens:
            raise ValueError(f"[CONF] auth.token_file: {str(auth.token_file)!r} holds no token")
        if any(len(t) < 16 or any(c.isspace() for c in t) for t in tokens):
            raise ValueError(f"[CONF] auth.token_file: {str(auth.token_file)!r}: every token must be at least 16 "
                             "characters, without spaces")
        return cls(tokens)

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def accepts(self, credential: str | bytes | None) -> bool:
        """True when auth is off, or `credential` ("Bearer <token>", or the bare token) is one of the tokens."""
        if not self._tokens:
            return True
        if not credential:
            return False
        if isinstance(credential, str):
            credential = credential.encode("utf-8", "replace")
        scheme, _, rest = credential.strip().partition(b" ")
        token = rest.strip() if scheme.lower() == b"bearer" else credential.strip()
        found = False
        for known in self._tokens:  # no early exit: the time taken does not depend on which token matched
            found |= hmac.compare_digest(token, known)
        return found


def server_ssl_context(tls: TlsConfig) -> ssl.SSLContext | None:
    """The TLS context for the REST and bRPC doors (TLS 1.2+), or None when TLS is off."""
    if not tls.enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(tls.cert_file), str(tls.key_file))
    if tls.client_ca_file is not None:
        context.load_verify_locations(str(tls.client_ca_file))
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def grpc_server_credentials(tls: TlsConfig):
    """grpc.ServerCredentials for the gRPC door, or None when TLS is off."""
    if not tls.enabled:
        return None
    import grpc

    key, cert = Path(tls.key_file).read_bytes(), Path(tls.cert_file).read_bytes()
    client_ca = Path(tls.client_ca_file).read_bytes() if tls.client_ca_file is not None else None
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=client_ca,
                                       require_client_auth=client_ca is not None)


def warn_if_exposed(host: str, tls: TlsConfig, tokens: TokenSet) -> None:
    """One loud WARNING when the server listens beyond loopback without TLS or without auth."""
    if is_loopback(host):
        return
    missing = [name for name, on in (("TLS (tls.cert_file/key_file)", tls.enabled),
                                     ("token auth (auth.token_file)", tokens.enabled)) if not on]
    if missing:
        log.warning("listening on %s without %s: anyone who can reach this address can call the model and read "
                    "/metrics; see README \"Limits and security\"", host, " and without ".join(missing))
