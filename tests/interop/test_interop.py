"""Interop: a Python gRPC client (grpcio) and tokens minted by PyJWT, against the `server`
example, checking what crosses the wire: every rejection code, the reply's subject and trace id,
streaming with and without the scope, public health and reflection, the access log's facts
(who called, which layer said no, no secret anywhere), and /metrics."""

import collections
import json
import re
import time
import urllib.request

import grpc
import jwt
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from conftest import SECRET

GREETER = "palisade.demo.v1.Greeter"
TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"

def token(sub="py-client", scope=None, expires_in=300, secret=SECRET, algorithm="HS256"):
    now = int(time.time())
    claims = {"sub": sub, "iat": now, "exp": now + expires_in}
    if scope is not None:
        claims["scope"] = scope
    return jwt.encode(claims, secret, algorithm=algorithm)


def say_hello(server, pb, metadata=(), **fields):
    """Calls SayHello and returns (code, reply or None, trailing metadata)."""
    try:
        reply, call = server.greeter().SayHello.with_call(
            pb.HelloRequest(**fields), metadata=metadata, timeout=10
        )
        code, trailing = grpc.StatusCode.OK, call.trailing_metadata()
    except grpc.RpcError as error:
        reply, code, trailing = None, error.code(), error.trailing_metadata()
    server.seen[code] += 1
    return code, reply, dict(trailing or ())


def bearer(value):
    return (("authorization", f"Bearer {value}"),)


def test_authorized_call_carries_subject_and_trace_id(server, pb):
    metadata = bearer(token(sub="ada")) + (("traceparent", TRACEPARENT),)
    code, reply, _ = say_hello(server, pb, metadata, name="Ada")
    assert code == grpc.StatusCode.OK
    assert reply.message == "Hello, Ada!"
    assert reply.subject == "ada"
    assert reply.trace_id == TRACE_ID


def test_calls_without_traceparent_get_a_fresh_trace(server, pb):
    code, reply, _ = say_hello(server, pb, bearer(token()), name="x")
    assert code == grpc.StatusCode.OK
    assert re.fullmatch(r"[0-9a-f]{32}", reply.trace_id)
    assert reply.trace_id != "0" * 32 and reply.trace_id != TRACE_ID


@pytest.mark.parametrize(
    "metadata",
    [
        (),
        (("authorization", "Basic dXNlcjpwYXNz"),),
        (("authorization", "Bearer "),),
        (("authorization", "Bearer not-a-jwt"),),
        (("authorization", "Bearer a.b.c"),),
        bearer(token(secret="someone-elses-secret-0123456789abcdef")),
        bearer(token(expires_in=-3600)),
        bearer(token(algorithm="none", secret=None)),
        bearer("x" * (10 * 1024)),  # over the 8 KiB limit, under HTTP/2's header list limit
    ],
    ids=["missing", "basic", "empty", "garbage", "bad-base64", "forged", "expired", "alg-none", "huge"],
)
def test_bad_tokens_are_unauthenticated(server, pb, metadata):
    code, _, _ = say_hello(server, pb, metadata, name="x")
    assert code == grpc.StatusCode.UNAUTHENTICATED


def test_rejections_leak_nothing(server, pb):
    secret_token = token(secret="someone-elses-secret-0123456789abcdef")
    with pytest.raises(grpc.RpcError) as rejected:
        server.greeter().SayHello(pb.HelloRequest(name="x"), metadata=bearer(secret_token), timeout=10)
    server.seen[rejected.value.code()] += 1
    details = rejected.value.details() or ""
    assert secret_token not in details and "kid" not in details.lower()
    assert len(details) < 100


def test_handler_codes_pass_through(server, pb):
    for fail_code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNAVAILABLE):
        code, _, _ = say_hello(server, pb, bearer(token()), name="x", fail_code=fail_code.value[0])
        assert code == fail_code


def test_stream_needs_the_scope(server, pb):
    stub = server.greeter()
    request = pb.HelloRequest(name="s", count=3)
    with pytest.raises(grpc.RpcError) as denied:
        list(stub.SayHelloStream(request, metadata=bearer(token(scope="greeter.read")), timeout=10))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    replies = list(
        stub.SayHelloStream(request, metadata=bearer(token(scope="greeter.read greeter.stream")), timeout=10)
    )
    assert [r.message for r in replies] == ["Hello, s!"] * 3


def test_health_and_reflection_need_no_token(server):
    health = health_pb2_grpc.HealthStub(server.channel)
    assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == (
        health_pb2.HealthCheckResponse.SERVING
    )
    reflection = reflection_pb2_grpc.ServerReflectionStub(server.channel)
    responses = reflection.ServerReflectionInfo(
        iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
    )
    services = {s.name for r in responses for s in r.list_services_response.service}
    assert GREETER in services and "grpc.health.v1.Health" in services


def test_rate_limit_answers_resource_exhausted_with_pushback(limited_server, pb):
    results = [say_hello(limited_server, pb, bearer(token()), name="r") for _ in range(6)]
    codes = [code for code, _, _ in results]
    assert codes[:3] == [grpc.StatusCode.OK] * 3, codes
    rejected = [trailing for code, _, trailing in results if code == grpc.StatusCode.RESOURCE_EXHAUSTED]
    assert rejected, codes
    assert int(rejected[0]["grpc-retry-pushback-ms"]) > 0


def test_health_is_never_rate_limited(limited_server):
    health = health_pb2_grpc.HealthStub(limited_server.channel)
    for _ in range(10):
        assert health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10).status == (
            health_pb2.HealthCheckResponse.SERVING
        )


def access_lines(server, method, until, within=10.0):
    """The server's `finished call` lines for `method`, once `until(lines)` holds: the log is
    written by a writer thread of its own, so the lines arrive shortly after the replies. Waits
    at most `within` seconds, re-reading the log file (no fixed sleep decides anything)."""
    deadline = time.monotonic() + within
    while True:
        lines = []
        for line in server.output().splitlines():
            try:
                fields = json.loads(line)
            except ValueError:
                continue
            if fields.get("message") == "finished call" and fields.get("grpc.method") == method:
                lines.append(fields)
        if until(lines):
            return lines
        assert time.monotonic() < deadline, f"no such lines in:\n{server.output()}"
        time.sleep(0.02)


def test_access_log_names_the_caller_and_the_layer_that_said_no(server, pb):
    good, forged = token(sub="grace"), token(sub="mallory", secret="not-the-server-secret-0123456789ab")
    assert say_hello(server, pb, bearer(good), name="facts")[0] == grpc.StatusCode.OK
    assert say_hello(server, pb, bearer(forged), name="facts")[0] == grpc.StatusCode.UNAUTHENTICATED
    lines = access_lines(
        server,
        "SayHello",
        lambda lines: any(l.get("enduser.id") == "grace" for l in lines)
        and any(l.get("palisade.rejected_by") == "jwt" for l in lines),
    )
    verified = next(l for l in lines if l.get("enduser.id") == "grace")
    assert verified["grpc.code"] == "OK" and "palisade.rejected_by" not in verified
    rejected = next(l for l in lines if l.get("palisade.rejected_by") == "jwt")
    assert rejected["grpc.code"] == "Unauthenticated"
    assert "enduser.id" not in rejected, "a forged token's subject is never logged"
    assert not any(l.get("enduser.id") == "mallory" for l in lines)
    # No token and no secret in any line, nor in any series.
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        scrape = response.read().decode()
    for text in (server.output(), scrape):
        for secret in (good, forged, SECRET, good.split(".")[2]):
            assert secret not in text


def test_a_rate_limited_line_names_the_limiter(limited_server, pb):
    for _ in range(6):
        say_hello(limited_server, pb, bearer(token(sub="rate")), name="r2")
    # The limiter answers after jwt verified the caller: the line says who was limited.
    def limited(line):
        return line.get("palisade.rejected_by") == "ratelimit" and line.get("enduser.id") == "rate"

    lines = access_lines(limited_server, "SayHello", lambda lines: any(map(limited, lines)))
    assert next(filter(limited, lines))["grpc.code"] == "ResourceExhausted"


def test_metrics_count_what_the_client_saw(server):
    """Runs last in this module: /metrics holds exactly the SayHello codes seen above."""
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        text = response.read().decode()
    pattern = re.compile(r"^grpc_server_handled_total\{([^}]*)\} (\S+)$", re.M)
    counted = collections.Counter()
    for labels, value in pattern.findall(text):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if fields.get("grpc_service") == GREETER and fields.get("grpc_method") == "SayHello":
            counted[fields["grpc_code"]] += int(float(value))
    go_names = {
        grpc.StatusCode.OK: "OK",
        grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
        grpc.StatusCode.NOT_FOUND: "NotFound",
        grpc.StatusCode.INTERNAL: "Internal",
        grpc.StatusCode.UNAVAILABLE: "Unavailable",
    }
    expected = {go_names[code]: n for code, n in server.seen.items()}
    assert {k: v for k, v in counted.items() if v} == expected
