"""The KEDA trigger's query, for real: a real Prometheus scrapes a real Flow (flow.py on the
offline models) under bounded, closed-loop load, and the query of k8s/autoscaling/keda's
ScaledObject, run through Prometheus' API, tracks the load: above zero and rising with the
number of concurrent requests, back to zero once idle; and the manifest's threshold turns it
into one replica at light load and a second one at the load docs/autoscaling.md names.
"""

import math
import statistics
import threading
import time
from contextlib import contextmanager
from typing import Dict, Iterator, List

import pytest
import requests

from devtools.offline_flow import RunningFlow, serve_flow_process
from tests.test_autoscaling_manifests import KEDA, SCALE_TO_ZERO, build, trigger
from tests.test_k8s import of_kind
from tests.test_monitoring import (
    MONITORING,
    Prometheus,
    prometheus_config,
    serve_prometheus,
    wait_for,
)

# Concurrent clients, each sending its next request as soon as the last is answered.
LIGHT_LOAD, HEAVY_LOAD = 2, 8
LOAD_SECONDS = 8
SETTLE_SECONDS = 3  # the first scrapes after the load starts may not see all of it yet
SAMPLE_SECONDS = 0.5
NAMESPACE = 'speech2image'  # the label the Prometheus Operator puts on every scraped series


def keda_trigger(tmp_path) -> Dict:
    """The Prometheus trigger of the diffusion ScaledObject, as the KEDA build applies it."""
    return trigger(of_kind(build(tmp_path, KEDA), 'ScaledObject')['stablediffusion'])


def scrape_like_the_operator(flow: RunningFlow) -> Dict:
    """prometheus-local.yml aimed at ``flow``, each target labelled with the namespace, as the
    ServiceMonitors' scrapes are in the cluster."""
    config = prometheus_config(flow, MONITORING / 'alerts.yml')
    for job in config['scrape_configs']:
        for static in job['static_configs']:
            static['labels'] = {'namespace': NAMESPACE}
    return config


@contextmanager
def closed_loop_load(flow: RunningFlow, clients: int) -> Iterator[List[int]]:
    """``clients`` threads sending one-image /generate requests back to back over HTTP (plain
    JSON: light on the client side, so the load is what reaches the gateway) until the block
    ends; yields the list of answers counted so far (one slot per client)."""
    answered = [0] * clients
    failures: List[BaseException] = []
    stop = threading.Event()

    def client(index: int) -> None:
        while not stop.is_set():
            try:
                response = requests.post(
                    f'{flow.http}/generate',
                    timeout=120,
                    json={
                        'data': [{'text': f'a lighthouse {index}'}],
                        'parameters': {'num_images': 1},
                    },
                )
                assert response.status_code == 200, response.text
                [doc] = response.json()['data']
                assert len(doc['matches']) == 1
                answered[index] += 1
            except BaseException as error:  # noqa: B036 - reported in the test thread
                failures.append(error)
                return

    threads = [
        threading.Thread(target=client, args=(index,), daemon=True) for index in range(clients)
    ]
    for thread in threads:
        thread.start()
    try:
        yield answered
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=120)
    assert not failures, failures


def sampled(prometheus: Prometheus, query: str, seconds: float) -> List[float]:
    """The query's value every SAMPLE_SECONDS for ``seconds``."""
    values = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        values.append(prometheus.value(query))
        time.sleep(SAMPLE_SECONDS)
    return values


def desired_replicas(value: float, threshold: float) -> int:
    """What the HorizontalPodAutoscaler KEDA makes asks for with an AverageValue metric."""
    return math.ceil(value / threshold)


@pytest.fixture(scope='module')
def monitored_flow(tmp_path_factory) -> Iterator[tuple]:
    workdir = tmp_path_factory.mktemp('prometheus')
    with (
        serve_flow_process(log=workdir / 'flow.log') as flow,
        serve_prometheus(flow, workdir, scrape_like_the_operator(flow)) as prometheus,
    ):
        wait_for(lambda: prometheus.value('sum(up)') == 3, 'every target up')
        yield flow, prometheus


def test_trigger_query_tracks_requests_in_flight_and_the_threshold_scales_at_heavy_load(
    monitored_flow, tmp_path
):
    flow, prometheus = monitored_flow
    rule = keda_trigger(tmp_path)
    query, threshold = rule['metadata']['query'], float(rule['metadata']['threshold'])
    wait_for(lambda: prometheus.value(query) == 0, f'{query} = 0 before any traffic')

    observed = {}
    for clients in (LIGHT_LOAD, HEAVY_LOAD):
        with closed_loop_load(flow, clients) as answered:
            time.sleep(SETTLE_SECONDS)
            values = sampled(prometheus, query, LOAD_SECONDS - SETTLE_SECONDS)
        observed[clients] = (statistics.median(values), max(values), sum(answered))
        print(
            f'{clients} clients: {query} median {observed[clients][0]:g}, '
            f'max {observed[clients][1]:g}; {sum(answered)} answers'
        )
    light, heavy = observed[LIGHT_LOAD][0], observed[HEAVY_LOAD][0]
    assert 0 < light <= LIGHT_LOAD and observed[LIGHT_LOAD][1] <= LIGHT_LOAD, observed
    assert light < heavy <= HEAVY_LOAD, observed
    assert desired_replicas(observed[LIGHT_LOAD][1], threshold) == 1, observed
    assert desired_replicas(heavy, threshold) >= 2, observed

    wait_for(lambda: prometheus.value(query) == 0, f'{query} back to 0 once idle')


def test_every_trigger_query_evaluates(monitored_flow, tmp_path):
    """Each query of the scale-to-zero build (both triggers) is valid PromQL to a real Prometheus;
    kube-state-metrics' series are not scraped here, so the gateway-starting one is empty."""
    _, prometheus = monitored_flow
    scaled = of_kind(build(tmp_path, KEDA, SCALE_TO_ZERO), 'ScaledObject')['stablediffusion']
    for rule in scaled['spec']['triggers']:
        result = prometheus.query(rule['metadata']['query'])
        assert len(result) <= 1, f'KEDA refuses a query that returns several series: {rule["name"]}'
