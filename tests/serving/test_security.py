"""TLS, mutual TLS and bearer tokens on the real server over real sockets, with a CA and certificates made here;
both reflection versions; the metrics endpoint's own host; the CLI's flags."""

from __future__ import annotations

import datetime
import ipaddress
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection_pb2

from serving import security
from serving.cli import build_parser
from serving.client import ArcastClient
from serving.proto.arcast.v1 import models_pb2, models_pb2_grpc
from serving.server import ForecastServer, ServerConfig, spawn_server
from tests.serving.conftest import start_server

MODEL = "etth1-arnet"
TOKEN = "right-0c7d5e1f9a"
OTHER_TOKEN = "second-token-42"
WRONG = "wrong-b4d5ecre7"
SERVE = [sys.executable, "-m", "serving", "serve", "--log-format", "text"]


@dataclass
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # an unrelated CA
    stranger_cert: Path  # a client certificate the unrelated CA signed
    stranger_key: Path


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Certificate, ec.EllipticCurvePrivateKey] | None = None,
    sans: list[x509.GeneralName] | None = None,
    usage: x509.ObjectIdentifier | None = None,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer[0].subject if issuer else subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is None:
        builder = builder.add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False), critical=True
        )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if usage:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer[1] if issuer else key, hashes.SHA256())


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("pki")

    def write(name: str, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None = None) -> tuple[Path, Path]:
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        if key is not None:
            pem = key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
            (folder / f"{name}.key").write_bytes(pem)
        return folder / f"{name}.pem", folder / f"{name}.key"

    ca_key, other_key = _key(), _key()
    ca, other = _cert("arcast test CA", ca_key), _cert("unrelated CA", other_key)
    server_key, client_key, stranger_key = _key(), _key(), _key()
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    server = _cert("localhost", server_key, (ca, ca_key), sans, ExtendedKeyUsageOID.SERVER_AUTH)
    client = _cert("client", client_key, (ca, ca_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    stranger = _cert("stranger", stranger_key, (other, other_key), usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return Pki(
        write("ca", ca)[0],
        *write("server", server, server_key),
        *write("client", client, client_key),
        write("other-ca", other)[0],
        *write("stranger", stranger, stranger_key),
    )


@pytest.fixture(scope="module")
def tls_server(model_store: Path, pki: Pki) -> Iterator[ForecastServer]:
    """TLS with bearer tokens, health open (the default), metrics on."""
    srv = start_server(
        model_store,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tokens=frozenset({TOKEN, OTHER_TOKEN}),
        metrics_port=0,
    )
    yield srv
    srv.stop(grace_s=1)


@pytest.fixture(scope="module")
def mtls_server(model_store: Path, pki: Pki) -> Iterator[ForecastServer]:
    """Mutual TLS with a token, health closed."""
    srv = start_server(
        model_store,
        tls_cert=pki.server_cert,
        tls_key=pki.server_key,
        tls_client_ca=pki.ca,
        tokens=frozenset({TOKEN}),
        open_health=False,
    )
    yield srv
    srv.stop(grace_s=1)


def target(server: ForecastServer) -> str:
    return f"127.0.0.1:{server.port}"


def code_of(call, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        call(*args, **kwargs)
    return err.value


# --- TLS ---


def test_tls_forecast_with_the_ca(tls_server: ForecastServer, pki: Pki, histories: np.ndarray) -> None:
    with ArcastClient(target(tls_server), tls_ca=pki.ca, token=TOKEN) as client:
        result = client.forecast(MODEL, [histories[0], histories[1]], 24)
    assert (result.model, len(result.forecasts), result.forecasts[0].values.shape) == (MODEL, 2, (24, 1))
    assert np.isfinite(result.forecasts[0].values).all()


def test_tls_by_host_name(tls_server: ForecastServer, pki: Pki) -> None:
    with ArcastClient(f"localhost:{tls_server.port}", tls_ca=pki.ca, token=TOKEN) as client:
        assert [m.name for m in client.list_models()] == [MODEL]


def test_plaintext_client_to_tls_server_fails(tls_server: ForecastServer) -> None:
    with ArcastClient(target(tls_server), timeout_s=5, token=TOKEN) as client:
        assert code_of(client.list_models).code() == grpc.StatusCode.UNAVAILABLE


def test_tls_client_without_the_right_ca_fails(tls_server: ForecastServer, pki: Pki) -> None:
    with ArcastClient(target(tls_server), timeout_s=5, tls_ca=pki.other_ca, token=TOKEN) as client:
        assert code_of(client.list_models).code() == grpc.StatusCode.UNAVAILABLE


def test_mutual_tls(mtls_server: ForecastServer, pki: Pki, histories: np.ndarray) -> None:
    with ArcastClient(target(mtls_server), timeout_s=5, tls_ca=pki.ca, token=TOKEN) as anonymous:
        assert code_of(anonymous.list_models).code() == grpc.StatusCode.UNAVAILABLE
    stranger = {"tls_cert": pki.stranger_cert, "tls_key": pki.stranger_key}
    with ArcastClient(target(mtls_server), timeout_s=5, tls_ca=pki.ca, token=TOKEN, **stranger) as client:
        assert code_of(client.list_models).code() == grpc.StatusCode.UNAVAILABLE
    known = {"tls_cert": pki.client_cert, "tls_key": pki.client_key}
    with ArcastClient(target(mtls_server), tls_ca=pki.ca, token=TOKEN, **known) as client:
        assert client.forecast(MODEL, [histories[0]], 12).forecasts[0].values.shape == (12, 1)


# --- bearer tokens ---


def test_forecast_needs_the_right_token(tls_server: ForecastServer, pki: Pki, histories: np.ndarray) -> None:
    with ArcastClient(target(tls_server), tls_ca=pki.ca) as client:
        err = code_of(client.forecast, MODEL, [histories[0]], 12)
        assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED, "missing bearer token")
    with ArcastClient(target(tls_server), tls_ca=pki.ca, token=WRONG) as client:
        err = code_of(client.forecast, MODEL, [histories[0]], 12)
        assert (err.code(), err.details()) == (grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token")
        assert WRONG not in str(err) and WRONG not in (err.debug_error_string() or "")
    for token in (TOKEN, OTHER_TOKEN):  # every configured token works
        with ArcastClient(target(tls_server), tls_ca=pki.ca, token=token) as client:
            assert client.forecast(MODEL, [histories[0]], 12).model == MODEL


def test_list_models_needs_the_right_token(tls_server: ForecastServer, pki: Pki) -> None:
    for token, code in ((None, grpc.StatusCode.UNAUTHENTICATED), (WRONG, grpc.StatusCode.UNAUTHENTICATED)):
        with ArcastClient(target(tls_server), tls_ca=pki.ca, token=token) as client:
            assert code_of(client.list_models).code() == code
    with ArcastClient(target(tls_server), tls_ca=pki.ca, token=TOKEN) as client:
        assert [m.name for m in client.list_models()] == [MODEL]


def test_the_token_is_checked_before_the_request(tls_server: ForecastServer, pki: Pki) -> None:
    # no recommender is served: with the token the service answers NOT_FOUND, without it the interceptor refuses
    with ArcastClient(target(tls_server), tls_ca=pki.ca, token=TOKEN) as client:
        assert code_of(client.recommend, "no-such-recommender", [1, 2, 3]).code() == grpc.StatusCode.NOT_FOUND
    for token in (None, WRONG):
        with ArcastClient(target(tls_server), tls_ca=pki.ca, token=token) as client:
            err = code_of(client.recommend, "no-such-recommender", [1, 2, 3])
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED


def test_malformed_authorization_is_missing_bearer_token(tls_server: ForecastServer, pki: Pki) -> None:
    with ArcastClient(target(tls_server), tls_ca=pki.ca) as client:  # no token: the metadata is set by hand
        stub, request = models_pb2_grpc.ModelServiceStub(client.channel), models_pb2.ListModelsRequest()
        for value in (f"Basic {TOKEN}", TOKEN, "Bearer "):
            err = code_of(stub.ListModels, request, metadata=[("authorization", value)])
            assert err.code() == grpc.StatusCode.UNAUTHENTICATED and err.details().startswith("missing bearer token")
        reply = stub.ListModels(request, metadata=[("authorization", f"bearer {TOKEN}")])
        assert [m.name for m in reply.models] == [MODEL]  # the scheme is case-insensitive


def test_refusals_are_counted(tls_server: ForecastServer, pki: Pki) -> None:
    with ArcastClient(target(tls_server), tls_ca=pki.ca, token=WRONG) as client:
        code_of(client.list_models)
    text = urllib.request.urlopen(f"http://127.0.0.1:{tls_server.metrics_port}/metrics", timeout=5).read().decode()
    assert 'arcast_errors_total{code="UNAUTHENTICATED",method="ListModels"}' in text


def test_health_open_by_default_closed_on_request(
    tls_server: ForecastServer, mtls_server: ForecastServer, pki: Pki
) -> None:
    with ArcastClient(target(tls_server), tls_ca=pki.ca) as client:  # no token
        assert client.health() == "SERVING"
        assert client.health("arcast.v1.ForecastService") == "SERVING"
    mutual = {"tls_ca": pki.ca, "tls_cert": pki.client_cert, "tls_key": pki.client_key}
    with ArcastClient(target(mtls_server), **mutual) as client:
        assert code_of(client.health).code() == grpc.StatusCode.UNAUTHENTICATED
    with ArcastClient(target(mtls_server), token=TOKEN, **mutual) as client:
        assert client.health() == "SERVING"


def test_every_configured_token_is_compared(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    compare = security.hmac.compare_digest
    monkeypatch.setattr(security.hmac, "compare_digest", lambda a, b: calls.append(1) or compare(a, b))
    interceptor = security.TokenAuthInterceptor(["first", "second", "third"])
    for token, valid in (("first", True), ("third", True), ("nope", False), ("firstfirst", False)):
        calls.clear()
        assert interceptor._valid(token) is valid
        assert len(calls) == 3  # no early exit on a match


# --- where tokens come from ---


def test_tokens_from_a_file_and_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"# the ops team\n{TOKEN}\n\n   {OTHER_TOKEN}  \n# retired: old-token\n")
    assert security.load_tokens(path, env={}) == {TOKEN, OTHER_TOKEN}
    assert security.load_tokens(None, env={"ARCAST_TOKENS": f"a1, b2,,{TOKEN}"}) == {"a1", "b2", TOKEN}
    assert security.load_tokens(path, env={"ARCAST_TOKENS": "c3"}) == {TOKEN, OTHER_TOKEN, "c3"}
    assert security.load_tokens(None, env={}) == frozenset()  # no tokens: no authentication

    empty = tmp_path / "empty"
    empty.write_text("# nothing yet\n\n")
    with pytest.raises(security.SecurityError, match=r"--token-file .*empty: no token"):
        security.load_tokens(empty, env={})
    spaced = tmp_path / "spaced"
    spaced.write_text("fine\ntwo words\n")
    with pytest.raises(security.SecurityError, match=r"spaced line 2: a token must be printable ASCII") as err:
        security.load_tokens(spaced, env={})
    assert "two words" not in str(err.value)
    with pytest.raises(security.SecurityError, match=r"--token-file .*missing: cannot read"):
        security.load_tokens(tmp_path / "missing", env={})


def test_cli_serve_and_models_with_tls_and_tokens(
    model_store: Path, pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# one per line\n{TOKEN}\n")
    monkeypatch.setenv("ARCAST_TOKENS", OTHER_TOKEN)  # the server's environment adds a second token
    proc, address = spawn_server(
        model_store, "--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), "--token-file", str(tokens)
    )
    try:
        models = [sys.executable, "-m", "serving", "models", "--target", address, "--tls-ca", str(pki.ca)]
        env = {k: v for k, v in os.environ.items() if k not in ("ARCAST_TOKENS", "ARCAST_TOKEN")}

        ok = subprocess.run([*models, "--token", TOKEN], capture_output=True, text=True, timeout=120, env=env)
        assert ok.returncode == 0, ok.stderr
        assert MODEL in ok.stdout

        from_env = subprocess.run(
            models, capture_output=True, text=True, timeout=120, env={**env, "ARCAST_TOKEN": OTHER_TOKEN}
        )
        assert from_env.returncode == 0, from_env.stderr
        assert MODEL in from_env.stdout

        wrong = subprocess.run([*models, "--token", WRONG], capture_output=True, text=True, timeout=120, env=env)
        assert wrong.returncode != 0
        assert "UNAUTHENTICATED: invalid bearer token" in wrong.stderr and "Traceback" not in wrong.stderr
        assert WRONG not in wrong.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def test_cli_serve_refuses_a_missing_certificate(model_store: Path, pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    flags = ["--tls-cert", str(missing), "--tls-key", str(pki.server_key)]
    out = subprocess.run(
        [*SERVE, "--store", str(model_store), "--port", "0", *flags], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 2, out.stderr
    assert f"--tls-cert {missing}: cannot read it" in out.stderr and "Traceback" not in out.stderr


def test_bad_tls_files_are_named(pki: Pki, tmp_path: Path) -> None:
    with pytest.raises(security.SecurityError, match=r"--tls-cert .* and --tls-key .*: not a certificate and its"):
        security.server_credentials(pki.server_cert, pki.client_key)  # a key of another certificate
    with pytest.raises(security.SecurityError, match=r"--tls-cert .*server\.key: not a PEM certificate"):
        security.server_credentials(pki.server_key, pki.server_cert)  # swapped
    with pytest.raises(security.SecurityError, match="--tls-cert and --tls-key go together"):
        security.server_credentials(pki.server_cert, None)
    with pytest.raises(security.SecurityError, match="--tls-client-ca needs --tls-cert and --tls-key"):
        security.server_credentials(None, None, pki.ca)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n")
    with pytest.raises(security.SecurityError, match=r"--tls-ca .*garbage\.pem: not a usable PEM CA"):
        ArcastClient("127.0.0.1:1", tls_ca=garbage)
    with pytest.raises(security.SecurityError, match=r"--tls-client-ca .*garbage\.pem: not a usable PEM CA"):
        ForecastServer(
            ServerConfig(store=tmp_path, tls_cert=pki.server_cert, tls_key=pki.server_key, tls_client_ca=garbage)
        )


def test_client_cli_flags() -> None:
    args = build_parser().parse_args(["models", "--target", "h:1", "--tls-ca", "ca.pem", "--token-file", "t"])
    assert (args.tls_ca, args.token_file, args.token) == (Path("ca.pem"), Path("t"), None)
    with pytest.raises(SystemExit):  # --token and --token-file exclude each other
        build_parser().parse_args(["models", "--target", "h:1", "--token", "a", "--token-file", "t"])
    for command in (["forecast", "--model", "m", "--horizon", "1", "--input", "x"], ["recommend", "--model", "m"]):
        extra = ["--history", "1"] if command[0] == "recommend" else []
        args = build_parser().parse_args([*command, *extra, "--target", "h:1", "--tls-cert", "c", "--tls-key", "k"])
        assert (args.tls_cert, args.tls_key) == (Path("c"), Path("k"))


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("dns:///localhost:50051", True),
        ("unix:/tmp/arcast.sock", True),
        ("10.0.0.7:50051", False),
        ("models.example.com:443", False),
        ("[2001:db8::1]:50051", False),
    ],
)
def test_is_loopback(address: str, loopback: bool) -> None:
    assert security.is_loopback(address) is loopback


# --- metrics host, reflection ---


def test_metrics_bind_their_own_host(model_store: Path, tmp_path: Path) -> None:
    assert ServerConfig(store=tmp_path, host="0.0.0.0").metrics_host == "127.0.0.1"
    assert build_parser().parse_args(["serve", "--store", "s", "--host", "0.0.0.0"]).metrics_host == "127.0.0.1"
    srv = start_server(model_store, metrics_port=0, metrics_host="127.0.0.2")  # gRPC stays on 127.0.0.1
    try:
        text = urllib.request.urlopen(f"http://127.0.0.2:{srv.metrics_port}/metrics", timeout=5).read().decode()
        assert "arcast_model_loads_total" in text
        with pytest.raises(urllib.error.URLError):
            urllib.request.urlopen(f"http://127.0.0.1:{srv.metrics_port}/metrics", timeout=5)
    finally:
        srv.stop(grace_s=1)


def reflect(channel: grpc.Channel, version: str, request: reflection_pb2.ServerReflectionRequest):
    # v1 and v1alpha messages are identical on the wire
    call = channel.stream_stream(
        f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
        request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
        response_deserializer=reflection_pb2.ServerReflectionResponse.FromString,
    )
    return next(call(iter([request]), timeout=10))


@pytest.mark.parametrize("version", ["v1", "v1alpha"])
def test_reflection_v1_and_v1alpha(tls_server: ForecastServer, pki: Pki, version: str) -> None:
    list_services = reflection_pb2.ServerReflectionRequest(list_services="")
    with ArcastClient(target(tls_server), tls_ca=pki.ca, token=TOKEN) as client:
        names = {s.name for s in reflect(client.channel, version, list_services).list_services_response.service}
        assert {
            "arcast.v1.ForecastService",
            "arcast.v1.ModelService",
            "arcast.v1.RecommendService",
            "grpc.health.v1.Health",
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        } <= names
        symbol = reflection_pb2.ServerReflectionRequest(file_containing_symbol="grpc.reflection.v1.ServerReflection")
        (raw,) = reflect(client.channel, version, symbol).file_descriptor_response.file_descriptor_proto
        described = descriptor_pb2.FileDescriptorProto.FromString(raw)
        assert (described.package, described.service[0].method[0].input_type) == (
            "grpc.reflection.v1",
            ".grpc.reflection.v1.ServerReflectionRequest",
        )
    with ArcastClient(target(tls_server), tls_ca=pki.ca) as anonymous:  # reflection needs the token too
        err = code_of(reflect, anonymous.channel, version, list_services)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
