"""Prometheus metrics of the Executors.

They live on the registry jina gives each Executor (``runtime_args.metrics_registry``), so the
Executor's own ``/metrics`` endpoint serves them; metrics on the global default registry are not
exported by jina.
"""

from prometheus_client import CollectorRegistry, Histogram

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 32)


def registry_of(executor) -> CollectorRegistry:
    """The registry jina exports for ``executor``; a private one when it runs outside a Flow
    or with monitoring off."""
    return getattr(executor.runtime_args, 'metrics_registry', None) or CollectorRegistry()


class DiffusionMetrics:
    """What StableDiffusionExecutor reports."""

    def __init__(self, registry: CollectorRegistry):
        self.batch_documents = Histogram(
            'speech2image_diffusion_batch_documents',
            'Documents per pipeline call, after dynamic batching',
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
