"""OpenTelemetry tracing: one request gives one trace through gateway, Whisper and diffusion.

A small in-process OTLP/gRPC collector (opentelemetry-proto's TraceService on grpcio) stands in
for a real collector on 127.0.0.1 and keeps every span it is sent. The Flow runs as ``python
flow.py`` in its own process (``serve_flow_process``): its exporters connect lazily, at their
first export, so nothing is lost while the collector starts.
"""

import threading
from collections import defaultdict
from concurrent import futures
from contextlib import contextmanager
from typing import Dict, Iterator, List, Set

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

from devtools.offline_flow import ASSETS, free_ports, serve_flow_process
from speech2image.client import send
from speech2image.schema import SpeechDoc
from tests.support import poll_until

SPAN_DEADLINE_SECONDS = 30
# jina's BatchSpanProcessor exports every 5 s by default; sooner keeps the test short.
EXPORT_DELAY_MS = '200'
SERVICES = ('gateway', 'whisper', 'stablediffusion')
DRY_RUN = '_jina_dry_run_'


class SpanCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """Keeps the trace ids seen per service name (jina names the service after the runtime)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.traces: Dict[str, Set[str]] = defaultdict(set)
        self.span_names: Dict[str, List[str]] = defaultdict(list)
        # The readiness checks (jina's dry-run request) are traced through the Flow too.
        self.readiness_traces: Set[str] = set()

    def Export(self, request, context):
        with self.lock:
            for resource_spans in request.resource_spans:
                service = next(
                    attribute.value.string_value
                    for attribute in resource_spans.resource.attributes
                    if attribute.key == 'service.name'
                )
                for scope_spans in resource_spans.scope_spans:
                    for span in scope_spans.spans:
                        self.traces[service].add(span.trace_id.hex())
                        self.span_names[service].append(span.name)
                        if DRY_RUN in span.name:
                            self.readiness_traces.add(span.trace_id.hex())
        return trace_service_pb2.ExportTraceServiceResponse()

    def common_traces(self) -> Set[str]:
        """Trace ids that have spans from every one of the three services, readiness checks
        left out."""
        with self.lock:
            per_service = [
                set().union(*(ids for name, ids in self.traces.items() if name.startswith(service)))
                for service in SERVICES
            ]
            return set.intersection(*per_service) - self.readiness_traces


@contextmanager
def serve_collector(servicer: SpanCollector, port: int) -> Iterator[None]:
    """Serve ``servicer`` as an OTLP trace collector on 127.0.0.1:``port`` (plaintext gRPC)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    server.add_insecure_port(f'127.0.0.1:{port}')
    server.start()
    try:
        yield
    finally:
        server.stop(grace=None)


def test_a_request_is_one_trace_across_the_flow(monkeypatch):
    servicer = SpanCollector()
    [port] = free_ports(1)
    monkeypatch.setenv('OTEL_BSP_SCHEDULE_DELAY', EXPORT_DELAY_MS)
    with (
        serve_flow_process(
            '--traces-exporter-host', 'http://127.0.0.1', '--traces-exporter-port', str(port)
        ) as flow,
        serve_collector(servicer, port),
    ):
        [doc] = send(
            flow.grpc, '/', [SpeechDoc(bytes_=(ASSETS / 'apple.wav').read_bytes())], {'seed': 1}
        )
        assert doc.matches
        poll_until(
            servicer.common_traces,
            SPAN_DEADLINE_SECONDS,
            'no trace common to every service',
            interval=0.2,
            detail=lambda: f'spans per service: {dict(servicer.span_names)}',
        )

    traces = servicer.common_traces()
    assert len(traces) == 1, f'spans per service: {dict(servicer.span_names)}'
    for service in SERVICES:
        names = [
            name
            for key, spans in servicer.span_names.items()
            if key.startswith(service)
            for name in spans
        ]
        assert names, f'no spans from {service}'


def test_tracing_is_off_by_default():
    import flow as flow_module

    spec = flow_module.flow_spec(flow_module.parse_args([]))
    assert 'tracing' not in spec['with']
    assert all('tracing' not in executor for executor in spec['executors'])
