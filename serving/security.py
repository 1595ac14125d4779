"""TLS credentials and bearer-token authentication for the gRPC server and its clients.

Server: ``server_credentials`` reads the certificate, key and (for mutual TLS) client CA files; ``load_tokens`` reads
the accepted bearer tokens from a file and/or ``ARCAST_TOKENS``; ``TokenAuthInterceptor`` answers UNAUTHENTICATED to
every call without one of them (open services excepted). Client: ``channel_credentials`` and
``BearerTokenInterceptor`` (the ``authorization: Bearer <token>`` metadata on every call).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import ssl
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc

log = logging.getLogger(__name__)

TOKENS_ENV = "ARCAST_TOKENS"  # server: accepted tokens, comma-separated
TOKEN_ENV = "ARCAST_TOKEN"  # client: the token to send
_CERT_MARKER = b"-----BEGIN CERTIFICATE-----"
_KEY_MARKER = b"PRIVATE KEY-----"


class SecurityError(ValueError):
    """A TLS or token setting that cannot be used; the message names the flag and the file."""


def read_pem(path: str | Path, flag: str, marker: bytes = _CERT_MARKER) -> bytes:
    """The PEM file behind ``flag``, checked to hold what it should (a certificate, or a private key)."""
    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise SecurityError(f"{flag} {path}: cannot read it ({err.strerror or err})") from err
    if marker not in data:
        what = "a PEM private key" if marker == _KEY_MARKER else "a PEM certificate"
        raise SecurityError(f"{flag} {path}: not {what}")
    return data


def _check_pair(cert: str | Path, key: str | Path, cert_flag: str, key_flag: str) -> None:
    """Parse the certificate and key the way OpenSSL will and check they belong together (gRPC would only say that
    it failed to bind)."""
    if b"ENCRYPTED" in Path(key).read_bytes():
        raise SecurityError(f"{key_flag} {key}: an encrypted private key; gRPC needs it unencrypted")
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER).load_cert_chain(cert, key, password=lambda: b"")
    except ssl.SSLError as err:
        problem = f"not a certificate and its private key ({err.reason or err})"
        raise SecurityError(f"{cert_flag} {cert} and {key_flag} {key}: {problem}") from err


def _check_ca(path: str | Path, flag: str) -> None:
    try:
        ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=path)
    except ssl.SSLError as err:
        raise SecurityError(f"{flag} {path}: not a usable PEM CA certificate ({err.reason or err})") from err


def server_credentials(
    cert: str | Path | None, key: str | Path | None, client_ca: str | Path | None = None
) -> grpc.ServerCredentials | None:
    """TLS server credentials (mutual TLS when ``client_ca`` is given), or None for plaintext."""
    if cert is None and key is None:
        if client_ca is not None:
            raise SecurityError("--tls-client-ca needs --tls-cert and --tls-key (mutual TLS is TLS first)")
        return None
    if cert is None or key is None:
        raise SecurityError("--tls-cert and --tls-key go together: give both or neither")
    chain = read_pem(cert, "--tls-cert")
    private_key = read_pem(key, "--tls-key", _KEY_MARKER)
    roots = read_pem(client_ca, "--tls-client-ca") if client_ca is not None else None
    _check_pair(cert, key, "--tls-cert", "--tls-key")
    if client_ca is not None:
        _check_ca(client_ca, "--tls-client-ca")
    return grpc.ssl_server_credentials(
        [(private_key, chain)], root_certificates=roots, require_client_auth=roots is not None
    )


def channel_credentials(
    ca: str | Path | None, cert: str | Path | None = None, key: str | Path | None = None
) -> grpc.ChannelCredentials:
    """TLS channel credentials: the server is checked against ``ca`` (default: the system roots); ``cert`` and
    ``key`` are the client's own certificate for mutual TLS."""
    if (cert is None) != (key is None):
        raise SecurityError("--tls-cert and --tls-key go together: give both or neither")
    roots = chain = private_key = None
    if ca is not None:
        roots = read_pem(ca, "--tls-ca")
        _check_ca(ca, "--tls-ca")
    if cert is not None and key is not None:
        chain, private_key = read_pem(cert, "--tls-cert"), read_pem(key, "--tls-key", _KEY_MARKER)
        _check_pair(cert, key, "--tls-cert", "--tls-key")
    return grpc.ssl_channel_credentials(root_certificates=roots, private_key=private_key, certificate_chain=chain)


def _check_token(token: str, where: str) -> str:
    # gRPC metadata values are printable ASCII; a token with spaces would not survive "Bearer <token>" either
    if not token.isascii() or not token.isprintable() or any(c.isspace() for c in token):
        raise SecurityError(f"{where}: a token must be printable ASCII without spaces")
    return token


def read_token_file(path: str | Path, flag: str = "--token-file") -> list[str]:
    """One token per line; blank lines and ``#`` comments are ignored."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise SecurityError(f"{flag} {path}: cannot read it ({getattr(err, 'strerror', None) or err})") from err
    tokens = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if line and not line.startswith("#"):
            tokens.append(_check_token(line, f"{flag} {path} line {number}"))
    return tokens


def load_tokens(token_file: str | Path | None = None, env: Mapping[str, str] | None = None) -> frozenset[str]:
    """The tokens the server accepts: those in ``token_file`` and those in ``$ARCAST_TOKENS`` (comma-separated).

    An empty result means no authentication; a token file without a token is an error (not a silent open door).
    """
    env = os.environ if env is None else env
    tokens: set[str] = set()
    if token_file is not None:
        from_file = read_token_file(token_file)
        if not from_file:
            raise SecurityError(f"--token-file {token_file}: no token in it (one per line, # starts a comment)")
        tokens.update(from_file)
    for part in env.get(TOKENS_ENV, "").split(","):
        if part.strip():
            tokens.add(_check_token(part.strip(), f"${TOKENS_ENV}"))
    return frozenset(tokens)


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _deny(handler: grpc.RpcMethodHandler, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that answers UNAUTHENTICATED."""

    def abort(request: Any, context: grpc.ServicerContext) -> Any:
        context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    kind = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming)]
    return kind(
        abort, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
    )


class TokenAuthInterceptor(grpc.ServerInterceptor):
    """Every call must carry ``authorization: Bearer <token>`` with one of ``tokens``, except calls to
    ``open_services`` (full service names, e.g. ``grpc.health.v1.Health``).

    The presented token is compared (as a SHA-256 digest, so lengths leak nothing) with every configured token with
    ``hmac.compare_digest``, all of them each time; neither the answer nor the log repeats it.
    """

    def __init__(
        self,
        tokens: Iterable[str],
        open_services: Iterable[str] = (),
        on_denied: Callable[[str, str], None] | None = None,
    ) -> None:
        self._digests = tuple(_digest(t) for t in tokens)
        if not self._digests:
            raise ValueError("TokenAuthInterceptor needs at least one token")
        self._open = frozenset(open_services)
        self._on_denied = on_denied

    def _valid(self, token: str) -> bool:
        presented = _digest(token)
        match = False
        for digest in self._digests:  # no early exit: the time does not tell which token (or whether any) matched
            match |= hmac.compare_digest(presented, digest)
        return match

    def _problem(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> str | None:
        values = [v for k, v in metadata or () if k == "authorization"]
        if not values:
            return "missing bearer token"
        value = values[0] if isinstance(values[0], str) else values[0].decode("latin-1")
        scheme, _, token = value.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return "missing bearer token (expected the authorization metadata 'Bearer <token>')"
        return None if self._valid(token.strip()) else "invalid bearer token"

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        if method.lstrip("/").split("/")[0] in self._open:
            return continuation(handler_call_details)
        problem = self._problem(handler_call_details.invocation_metadata)
        handler = continuation(handler_call_details)
        if problem is None or handler is None:
            return handler
        log.warning("unauthenticated call refused", extra={"method": method, "reason": problem})
        if self._on_denied is not None:
            self._on_denied(method, problem)
        return _deny(handler, problem)


class BearerTokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Client side: adds ``authorization: Bearer <token>`` to every call's metadata."""

    def __init__(self, token: str) -> None:
        self._entry = ("authorization", f"Bearer {_check_token(token, 'the bearer token')}")

    def _details(self, details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        metadata = [*(details.metadata or ()), self._entry]
        return _CallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready, details.compression
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
        return continuation(self._details(client_call_details), request_iterator)


class _CallDetails(grpc.ClientCallDetails):
    def __init__(self, method, timeout, metadata, credentials, wait_for_ready, compression) -> None:
        self.method = method
        self.timeout = timeout
        self.metadata = metadata
        self.credentials = credentials
        self.wait_for_ready = wait_for_ready
        self.compression = compression


def is_loopback(target: str) -> bool:
    """Whether a gRPC target (``host:port``, ``dns:///host:port``, ``unix:path``...) names this machine."""
    if target.startswith(("unix:", "unix-abstract:")):
        return True
    for prefix in ("dns:///", "dns:", "ipv4:", "ipv6:"):
        if target.startswith(prefix):
            target = target[len(prefix) :]
            break
    if target.startswith("["):
        host = target[1 : target.find("]")]
    elif target.count(":") == 1:
        host = target.split(":")[0]
    else:
        host = target  # a bare host name, or a bare IPv6 address
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
