"""pytest plugin: real OTLP metrics receivers on free loopback ports.

  otlp_grpc_receiver   a grpc MetricsService (what the Collector's otlp/grpc receiver is)
  otlp_http_receiver   an HTTP server decoding POST /v1/metrics ExportMetricsServiceRequest

Both put every decoded request in `.requests` (a queue.Queue) with its headers
(lower-cased names) and expose `.endpoint`, the value to give the exporter /
OTEL_EXPORTER_OTLP_ENDPOINT.
"""

from __future__ import annotations

import gzip
import queue
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc  # type: ignore[import-untyped,unused-ignore]
import pytest
from opentelemetry.proto.collector.metrics.v1 import (
    metrics_service_pb2,
    metrics_service_pb2_grpc,
)

ExportRequest = metrics_service_pb2.ExportMetricsServiceRequest


@dataclass
class Received:
    request: Any  # ExportMetricsServiceRequest
    headers: dict[str, str] = field(default_factory=dict)


class _Receiver:
    endpoint: str
    requests: queue.Queue[Received]

    def get(self, timeout: float = 10.0) -> Received:
        try:
            return self.requests.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no OTLP export reached {self.endpoint} in {timeout}s") from None

    def drain(self) -> list[Received]:
        out = []
        while True:
            try:
                out.append(self.requests.get_nowait())
            except queue.Empty:
                return out


class GrpcReceiver(_Receiver):
    def __init__(self) -> None:
        self.requests = queue.Queue()
        receiver = self

        class Servicer(metrics_service_pb2_grpc.MetricsServiceServicer):
            def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
                headers = {k: v for k, v in context.invocation_metadata()}
                receiver.requests.put(Received(request, headers))
                return metrics_service_pb2.ExportMetricsServiceResponse()

        self._server = grpc.server(ThreadPoolExecutor(max_workers=2))
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(  # type: ignore[no-untyped-call,unused-ignore]
            Servicer(), self._server
        )
        port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"

    def stop(self) -> None:
        self._server.stop(grace=None).wait(5)


class HttpReceiver(_Receiver):
    def __init__(self) -> None:
        self.requests = queue.Queue()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                encoding = self.headers.get("Content-Encoding", "")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                if self.path != "/v1/metrics":
                    self._reply(404, b"")
                    return
                if self.headers.get("Content-Type") != "application/x-protobuf":
                    self._reply(415, b"")
                    return
                request = ExportRequest()
                request.ParseFromString(body)
                receiver.requests.put(
                    Received(request, {k.lower(): v for k, v in self.headers.items()})
                )
                self._reply(
                    200, metrics_service_pb2.ExportMetricsServiceResponse().SerializeToString()
                )

            def _reply(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        # A base endpoint, as in OTEL_EXPORTER_OTLP_ENDPOINT; the signal path is appended.
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        kwargs={"poll_interval": 0.1}, daemon=True)
        self._thread.start()

    @property
    def metrics_url(self) -> str:
        return self.endpoint + "/v1/metrics"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


@pytest.fixture
def otlp_grpc_receiver() -> Iterator[GrpcReceiver]:
    receiver = GrpcReceiver()
    yield receiver
    receiver.stop()


@pytest.fixture
def otlp_http_receiver() -> Iterator[HttpReceiver]:
    receiver = HttpReceiver()
    yield receiver
    receiver.stop()


# --- reading requests ---------------------------------------------------------------

def attributes_of(key_values: Any) -> dict[str, Any]:
    """OTLP KeyValue list -> plain dict (string, int, double, bool values)."""
    out: dict[str, Any] = {}
    for kv in key_values:
        which = kv.value.WhichOneof("value")
        out[kv.key] = getattr(kv.value, which) if which else None
    return out


@dataclass(frozen=True)
class MetricSeen:
    name: str
    unit: str
    kind: str  # "sum" | "gauge" | ...
    monotonic: bool
    temporality: int
    points: tuple[tuple[tuple[tuple[str, Any], ...], float], ...]
    resource: tuple[tuple[str, Any], ...]
    scope: str

    def value(self, **attributes: Any) -> float:
        key = tuple(sorted(attributes.items()))
        for attrs, value in self.points:
            if attrs == key:
                return value
        raise KeyError(f"{self.name}: no point with attributes {attributes}: {self.points}")


def metrics_in(request: Any) -> dict[str, MetricSeen]:
    """The metrics of one export request by name (the last one wins)."""
    out: dict[str, MetricSeen] = {}
    for rm in request.resource_metrics:
        resource = tuple(sorted(attributes_of(rm.resource.attributes).items()))
        for sm in rm.scope_metrics:
            for metric in sm.metrics:
                kind = metric.WhichOneof("data")
                data = getattr(metric, kind)
                points = []
                for dp in data.data_points:
                    which = dp.WhichOneof("value")
                    value = float(getattr(dp, which))
                    points.append((tuple(sorted(attributes_of(dp.attributes).items())), value))
                out[metric.name] = MetricSeen(
                    name=metric.name, unit=metric.unit, kind=kind,
                    monotonic=bool(getattr(data, "is_monotonic", False)),
                    temporality=int(getattr(data, "aggregation_temporality", 0)),
                    points=tuple(points), resource=resource, scope=sm.scope.name,
                )
    return out
