"""TLS contexts and bearer tokens for every front door, from the config's `tls:` and `auth:` sections.

One token set serves REST (`Authorization: Bearer <token>`), gRPC (metadata `authorization`, same form) and
bRPC (`RpcMeta.authentication_data`: the token itself, or `Bearer <token>`). Tokens are compared in constant
time. Health checks stay open so that load balancers and Kubernetes probes need no secret."""

from __future__ import annotations

import hmac
import logging
import ssl
import stat
import time
from pathlib import Path

from resnest_serving.protocol.endpoints import is_loopback
from resnest_serving.serving.config.schema import AuthConfig, TlsConfig
from resnest_serving.serving.v2 import routes as v2_routes

log = logging.getLogger(__name__)

HEALTH_PATHS = {"/health/live": "live", "/health/ready": "ready", "/v2/health/live": "live",
                "/v2/health/ready": "ready"}
OPEN_GRPC_METHODS = frozenset({"/inference.GRPCInferenceService/ServerLive",
                               "/inference.GRPCInferenceService/ServerReady",
                               "/inference.GRPCInferenceService/ModelReady"})


def is_open_path(path: str) -> bool:
    """HTTP paths that need no token: the health checks, and the Open Inference Protocol's model readiness
    (`/v2/models/{name}[/versions/{v}]/ready`, open on gRPC too)."""
    return path in HEALTH_PATHS or v2_routes.is_open(path)


def read_tokens(path: Path, key: str = "auth.token_file") -> list[str]:
    """The tokens of a token file (one per line, blank lines and # comments skipped); ValueError naming `key`
    when it holds none or one is shorter than 16 characters or has spaces."""
    lines = [line.strip() for line in Path(path).read_text().splitlines()]
    tokens = [line for line in lines if line and not line.startswith("#")]
    if not tokens:
        raise ValueError(f"[CONF] {key}: {str(path)!r} holds no token")
    if any(len(t) < 16 or any(c.isspace() for c in t) for t in tokens):
        raise ValueError(f"[CONF] {key}: {str(path)!r}: every token must be at least 16 characters, without "
                         "spaces")
    return tokens


class TokenSet:
    """The accepted bearer tokens; an empty set accepts every request (auth off).

    Loaded from a file, the set follows it: `reload()` (on SIGHUP) reads it again, and a change of the file
    (mtime, size or inode, looked at no more than once a second) is picked up by the next check. A file that
    becomes unreadable or empty keeps the old tokens (an ERROR says why): rotation never turns auth off."""

    RECHECK_S = 1.0

    def __init__(self, tokens: list[str], path: Path | None = None):
        self._tokens = [t.encode() for t in tokens]
        self.path = path
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()

    @classmethod
    def load(cls, auth: AuthConfig) -> TokenSet:
        """Read `auth.token_file` (one token per line, blank lines and # comments skipped)."""
        if auth.token_file is None:
            return cls([])
        return cls(read_tokens(auth.token_file), Path(auth.token_file))

    @property
    def enabled(self) -> bool:
        return bool(self._tokens)

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self.path is None:
            return None
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def reload(self, why: str = "SIGHUP") -> bool:
        """Read the token file again; True when the new tokens are in use."""
        if self.path is None:
            return False
        self._stamp, self._checked = self._file_stamp(), time.monotonic()
        try:
            tokens = read_tokens(self.path)
        except (OSError, ValueError) as exc:
            log.error("auth: token file not reloaded (%s), the %d token(s) loaded before stay in use: %s", why,
                      len(self._tokens), exc)
            return False
        self._tokens = [t.encode() for t in tokens]
        log.info("auth: %d token(s) reloaded from %s (%s)", len(tokens), self.path, why)
        return True

    def _follow_file(self) -> None:
        now = time.monotonic()
        if self.path is None or now - self._checked < self.RECHECK_S:
            return
        self._checked = now
        stamp = self._file_stamp()
        if stamp is not None and stamp != self._stamp:
            self.reload("the file changed")

    def first(self) -> bytes:
        """The file's first token, following changes of the file: what a client of another server sends."""
        if self._tokens:
            self._follow_file()
        return self._tokens[0] if self._tokens else b""

    def accepts(self, credential: str | bytes | None) -> bool:
        """True when auth is off, or `credential` ("Bearer <token>", or the bare token) is one of the tokens."""
        if not self._tokens:
            return True
        self._follow_file()
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


def warn_if_readable_by_others(files: dict[str, Path | None]) -> list[str]:
    """One WARNING per secret file (token file, TLS private key; {config key: path}) that its group or
    others may read; returns the keys warned about."""
    warned = []
    for key, path in files.items():
        if path is None:
            continue
        try:
            mode = Path(path).stat().st_mode
        except OSError:
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s: %s is readable by group/others (mode %s): it holds a secret; chmod 600 it", key, path,
                        oct(stat.S_IMODE(mode)))
            warned.append(key)
    return warned


def door_security_line(doors: list[str], tls: TlsConfig, tokens: TokenSet) -> str:
    """The start-up line that says which doors speak TLS and whether tokens are required."""
    if tls.enabled:
        how = "TLS (mutual: client certificates required)" if tls.client_ca_file is not None else "TLS"
        tls_text = f"{how} on {', '.join(doors)}"
    else:
        tls_text = f"no TLS (plain text on {', '.join(doors)})"
    auth_text = (f"tokens required (auth.token_file {tokens.path}; health checks open)" if tokens.enabled
                 else "no tokens required (auth off)")
    return f"security: {tls_text}; {auth_text}"
