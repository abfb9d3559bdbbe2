"""Fixtures for the interop suite: the demo proto compiled for Python, and `server` example
processes started on free loopback ports and stopped after the tests."""

import collections
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
PROTO_DIR = ROOT / "examples" / "proto"
SECRET = "palisade-interop-secret-0123456789abcdef"


def _compile_proto():
    from grpc_tools import protoc

    out = Path(tempfile.mkdtemp(prefix="palisade-interop-"))
    status = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{PROTO_DIR}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            str(PROTO_DIR / "demo.proto"),
        ]
    )
    assert status == 0, "protoc failed on demo.proto"
    sys.path.insert(0, str(out))


_compile_proto()
import demo_pb2  # noqa: E402
import demo_pb2_grpc  # noqa: E402


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class DemoServer:
    """A running `server` example."""

    def __init__(self, *flags):
        binary = os.environ.get("PALISADE_SERVER_BIN", str(ROOT / "target" / "debug" / "server"))
        self.seen = collections.Counter()  # SayHello codes the tests saw
        self.port = free_port()
        self.metrics_port = free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.log = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [
                binary,
                "--addr",
                self.addr,
                "--metrics-addr",
                f"127.0.0.1:{self.metrics_port}",
                "--jwt-secret",
                SECRET,
                *flags,
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        self.channel = grpc.insecure_channel(self.addr)
        self._wait_serving()

    def _wait_serving(self):
        # Wait for the server's own readiness signal: grpc's channel_ready future, bounded.
        try:
            grpc.channel_ready_future(self.channel).result(timeout=60)
        except grpc.FutureTimeoutError:
            self.stop()
            raise AssertionError(f"server did not come up:\n{self.output()}")
        health = health_pb2_grpc.HealthStub(self.channel)
        reply = health.Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

    def greeter(self):
        return demo_pb2_grpc.GreeterStub(self.channel)

    def output(self):
        self.log.seek(0)
        return self.log.read().decode("utf-8", "replace")

    def stop(self):
        self.channel.close()
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture(scope="module")
def server():
    """The demo server with its defaults (no rate limit)."""
    running = DemoServer()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def limited_server():
    """The demo server with a global limit of 1 call/s and a burst of 3."""
    running = DemoServer("--rate", "1", "--burst", "3")
    yield running
    running.stop()


@pytest.fixture(scope="session")
def pb():
    return demo_pb2
