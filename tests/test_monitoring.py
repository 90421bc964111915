"""Monitoring, for real: the Flow with monitoring on, a real Prometheus scraping its three metrics
endpoints, known traffic (some of it failing), then checks through Prometheus' HTTP API.

Prometheus is started from monitoring/prometheus-local.yml (as in docs/monitoring.md), with
the test Flow's ports, a 1 s scrape interval and the alert rules of monitoring/alerts.yml.
"""

import json
import math
import re
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import pytest
import requests
import yaml

from devtools.offline_flow import ASSETS, ROOT, RunningFlow, free_ports, serve_flow_process
from speech2image.client import ServiceError, send
from speech2image.schema import SAMPLE_RATE, SpeechDoc
from tests.support import poll_until

MONITORING = ROOT / 'monitoring'
SCRAPE_INTERVAL = '1s'
DEADLINE_SECONDS = 60
# Grafana replaces $__rate_interval with a window of a few scrapes; a wide one here keeps the
# whole of the test traffic inside every rate().
RATE_WINDOW = '5m'
# An alert rule is `<expression> <comparison> <number>`.
ALERT_EXPRESSION = re.compile(r'^(?P<expression>.*?)\s*(?:>=|<=|==|!=|>|<)\s*[-+]?[\d.]+\s*$', re.S)
JOB_PORT_OFFSETS = {'gateway': 0, 'whisper': 1, 'stablediffusion': 2}
OWN_METRIC = re.compile(r'^(# (HELP|TYPE) )?speech2image_')

APPLE_SECONDS = 3.0268125  # assets/apple.wav
NOISE_SECONDS = 1.0
STEPS = 2  # conftest's --num-inference-steps
# Classifier-free guidance (the default guidance scale) runs the UNet on two latents per image.
LATENTS_PER_IMAGE = 2


class Prometheus:
    """A Prometheus server's HTTP API."""

    def __init__(self, url: str):
        self.url = url

    def query(self, expression: str) -> List[Dict]:
        """Evaluate ``expression`` now; the result's series. Fails on a PromQL error."""
        body = requests.get(
            f'{self.url}/api/v1/query', params={'query': expression}, timeout=10
        ).json()
        assert body['status'] == 'success', f'{expression}: {body.get("error")}'
        return body['data']['result']

    def value(self, expression: str) -> float:
        """The value of an expression that gives one series; NaN when it gives none."""
        result = self.query(expression)
        assert len(result) <= 1, f'{expression} gives {len(result)} series'
        return float(result[0]['value'][1]) if result else math.nan


def prometheus_config(flow: RunningFlow, rules: Path) -> Dict:
    """prometheus-local.yml aimed at ``flow``'s metrics ports, scraping every second."""
    config = yaml.safe_load((MONITORING / 'prometheus-local.yml').read_text())
    config['global'] = {'scrape_interval': SCRAPE_INTERVAL, 'evaluation_interval': SCRAPE_INTERVAL}
    config['rule_files'] = [str(rules)]
    for job in config['scrape_configs']:
        port = flow.port_monitoring + JOB_PORT_OFFSETS[job['job_name']]
        job['static_configs'] = [{'targets': [f'127.0.0.1:{port}']}]
    return config


@contextmanager
def serve_prometheus(
    flow: RunningFlow, workdir: Path, config: Optional[Dict] = None
) -> Iterator[Prometheus]:
    """Run the Debian ``prometheus`` binary on 127.0.0.1 against ``flow``, with ``config``
    (default: ``prometheus_config`` with the alert rules)."""
    binary = shutil.which('prometheus')
    assert binary, 'prometheus is not installed: run `make system-deps`'
    config_file = workdir / 'prometheus.yml'
    config_file.write_text(
        yaml.safe_dump(config or prometheus_config(flow, MONITORING / 'alerts.yml'))
    )
    [port] = free_ports(1)
    log = (workdir / 'prometheus.log').open('w')
    process = subprocess.Popen(
        [
            binary,
            f'--config.file={config_file}',
            f'--storage.tsdb.path={workdir / "tsdb"}',
            f'--web.listen-address=127.0.0.1:{port}',
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    prometheus = Prometheus(f'http://127.0.0.1:{port}')
    try:
        wait_for(lambda: requests.get(f'{prometheus.url}/-/ready', timeout=2).ok, 'Prometheus')
        yield prometheus
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def wait_for(condition, what: str) -> None:
    """Poll ``condition`` until it is true, for at most DEADLINE_SECONDS (Prometheus may not
    listen yet)."""
    poll_until(
        condition,
        DEADLINE_SECONDS,
        f'timed out waiting for {what}',
        interval=0.5,
        ignore=(requests.ConnectionError,),
    )


def drive_traffic(flow: RunningFlow) -> None:
    """Three requests that succeed and four that fail, one kind of failure each."""
    apple = (ASSETS / 'apple.wav').read_bytes()
    noise = np.random.default_rng(0).standard_normal(int(NOISE_SECONDS * SAMPLE_RATE)) * 0.1
    for _ in range(2):  # 2 clips, 4 images
        send(flow.grpc, '/', [SpeechDoc(bytes_=apple)], {'num_images': 2, 'seed': 1})
    send(flow.grpc, '/generate', [SpeechDoc(text='a lighthouse')], {'num_images': 1})
    failing = [
        ('/', SpeechDoc(text='a red apple'), {'num_images': 99}),  # diffusion: request
        ('/', SpeechDoc(bytes_=b'not audio'), {}),  # whisper: audio
        ('/', SpeechDoc(tensor=noise.astype(np.float32)), {}),  # whisper: no speech (request)
        ('/transcribe', SpeechDoc(bytes_=apple), {'task': 'sing'}),  # whisper: request
    ]
    for endpoint, doc, parameters in failing:
        with pytest.raises(ServiceError):
            send(flow.grpc, endpoint, [doc], parameters)


# Each Executor endpoint -> how many calls drive_traffic makes to it.
CALL_ENDPOINTS = {
    'transcribe': 6,  # Whisper
    'check_prompts': 1,  # Whisper
    'generate': 4,  # diffusion
    'generate_stream': 0,  # diffusion: /stream is not driven here
}
# What drive_traffic must leave in Prometheus: expression -> value.
EXPECTED = {
    # drive_traffic's 3, and the readiness dry run that serve_flow_process waits for.
    'jina_successful_requests_total{job="gateway"}': 4,
    'jina_failed_requests_total{job="gateway"}': 4,
    # Whisper: 2 apple clips and the noise clip are transcribed (bad bytes never decode).
    'speech2image_whisper_audio_duration_seconds_count': 3,
    'speech2image_whisper_audio_duration_seconds_sum': 2 * APPLE_SECONDS + NOISE_SECONDS,
    'speech2image_whisper_transcription_seconds_count': 3,
    'speech2image_whisper_real_time_factor_count': 3,
    'speech2image_whisper_empty_transcripts_total': 1,
    'sum(speech2image_whisper_detected_language_total)': 2,
    'speech2image_whisper_detected_language_total{language="en"}': 2,
    'speech2image_errors_total{executor="WhisperExecutor",kind="audio"}': 1,
    'speech2image_errors_total{executor="WhisperExecutor",kind="request"}': 2,
    'speech2image_errors_total{executor="WhisperExecutor",kind="internal"}': 0,
    'speech2image_errors_total{executor="StableDiffusionExecutor",kind="request"}': 1,
    'speech2image_errors_total{executor="StableDiffusionExecutor",kind="internal"}': 0,
    **{
        f'speech2image_executor_call_seconds_count{{endpoint="{endpoint}"}}': calls
        for endpoint, calls in CALL_ENDPOINTS.items()
    },
    # Diffusion: 3 pipeline calls (requests sent one at a time) for 5 images.
    'speech2image_diffusion_images_total': 5,
    'speech2image_diffusion_image_seconds_count': 5,
    'speech2image_diffusion_batch_documents_count': 3,
    'speech2image_diffusion_batch_documents_sum': 3,
    'speech2image_diffusion_step_seconds_count': 3 * STEPS,
    'speech2image_diffusion_unet_batch_samples_count': 3 * STEPS,
    'speech2image_diffusion_unet_batch_samples_sum': 5 * STEPS * LATENTS_PER_IMAGE,
    'speech2image_gpu_memory_allocated_bytes': 0,  # CPU here; the CUDA path is not exercised
}
# Timings are real measurements: their sums must be positive. expression -> how many series.
POSITIVE = {
    'speech2image_whisper_transcription_seconds_sum': 1,
    'speech2image_whisper_real_time_factor_sum': 1,
    'speech2image_diffusion_image_seconds_sum': 1,
    'speech2image_diffusion_step_seconds_sum': 1,
    'speech2image_model_load_seconds': 2,
    'speech2image_executor_call_seconds_sum > 0': 3,  # generate_stream's stays 0
}


def matches_expected(prometheus: Prometheus) -> bool:
    return all(
        math.isclose(prometheus.value(expression), value, rel_tol=1e-6)
        for expression, value in EXPECTED.items()
    )


def empty_expressions(prometheus: Prometheus) -> list:
    """The dashboard's and alerts' expressions that return no finite value: (name, expression,
    values)."""
    empty = []
    for name, expression in dashboard_expressions() + alert_expressions():
        values = [float(series['value'][1]) for series in prometheus.query(expression)]
        if not any(math.isfinite(value) for value in values):
            empty.append((name, expression, values))
    return empty


@pytest.fixture(scope='module')
def monitored(tmp_path_factory) -> Iterator[Tuple[RunningFlow, Prometheus]]:
    """The Flow, scraped by Prometheus, after drive_traffic, once Prometheus has it all. Served as
    its own process: forking it from this one, after earlier tests ran models here, crashed the
    test process (a segmentation fault in two full runs)."""
    workdir = tmp_path_factory.mktemp('prometheus')
    with serve_flow_process() as flow, serve_prometheus(flow, workdir) as prometheus:
        wait_for(lambda: prometheus.value('sum(up)') == len(JOB_PORT_OFFSETS), 'every target up')
        # Latency series exist at 0 before any call, so a scrape before the traffic gives rate()
        # its starting point; without them the first scrape can come after the traffic (a busy
        # Executor misses 1 s scrapes) and every latency panel stays empty.
        wait_for(
            lambda: (
                prometheus.value('count(speech2image_executor_call_seconds_count)')
                == len(CALL_ENDPOINTS)
            ),
            'every endpoint latency series at 0',
        )
        drive_traffic(flow)
        try:
            wait_for(lambda: matches_expected(prometheus), 'the traffic in Prometheus')
            # rate() panels need two scrapes after the traffic.
            wait_for(lambda: not empty_expressions(prometheus), 'every panel with data')
        except pytest.fail.Exception:
            pass  # test_custom_metrics_have_the_expected_values names what is missing
        yield flow, prometheus


def test_custom_metrics_have_the_expected_values(monitored):
    _, prometheus = monitored
    wrong = {
        expression: (prometheus.value(expression), value)
        for expression, value in EXPECTED.items()
        if not math.isclose(prometheus.value(expression), value, rel_tol=1e-6)
    }
    assert not wrong, f'expression: (in Prometheus, expected): {wrong}'
    for expression, count in POSITIVE.items():
        values = [float(series['value'][1]) for series in prometheus.query(expression)]
        assert len(values) == count and all(value > 0 for value in values), (expression, values)


def dashboard_expressions() -> List[Tuple[str, str]]:
    """(panel title, PromQL) for every query of the dashboard, Grafana's variables filled in."""
    dashboard = json.loads((MONITORING / 'dashboard.json').read_text())
    return [
        (panel['title'], target['expr'].replace('$__rate_interval', RATE_WINDOW))
        for panel in dashboard['panels']
        for target in panel.get('targets', [])
    ]


def alert_expressions() -> List[Tuple[str, str]]:
    """(alert, its expression without the threshold comparison) for every alert rule."""
    rules = yaml.safe_load((MONITORING / 'alerts.yml').read_text())
    expressions = []
    for group in rules['groups']:
        for rule in group['rules']:
            match = ALERT_EXPRESSION.match(rule['expr'])
            assert match, f'{rule["alert"]}: expr must be `<expression> <comparison> <number>`'
            expressions.append((rule['alert'], match['expression']))
    return expressions


def test_every_dashboard_and_alert_expression_returns_data(monitored):
    """No panel shows "no data" after traffic, and every alert's expression has series to
    compare with its threshold (an alert that is not firing returns nothing, so its expression
    is checked without the comparison; promtool's unit tests check the thresholds)."""
    _, prometheus = monitored
    empty = empty_expressions(prometheus)
    assert not empty, f'no data: {empty}'
    rules = yaml.safe_load((MONITORING / 'alerts.yml').read_text())
    for rule in rules['groups'][0]['rules']:
        prometheus.query(rule['expr'])  # the whole rule parses and evaluates too
    assert not prometheus.query('ALERTS{alertstate="firing"}')


def test_alert_rules_are_loaded_and_healthy(monitored):
    _, prometheus = monitored
    response = requests.get(f'{prometheus.url}/api/v1/rules', timeout=10).json()
    rules = [rule for group in response['data']['groups'] for rule in group['rules']]
    names = {rule['name'] for rule in rules}
    assert names == {name for name, _ in alert_expressions()}
    assert all(rule['health'] == 'ok' for rule in rules), rules


def test_metric_names_pass_promtool_lint(monitored):
    """promtool's linter (units, `_total` counters, naming) on this project's own metrics."""
    flow, _ = monitored
    for job in ('whisper', 'stablediffusion'):
        port = flow.port_monitoring + JOB_PORT_OFFSETS[job]
        text = requests.get(f'http://127.0.0.1:{port}/metrics', timeout=10).text
        own = '\n'.join(line for line in text.splitlines() if OWN_METRIC.match(line)) + '\n'
        assert 'speech2image_' in own
        lint = subprocess.run(
            ['promtool', 'check', 'metrics'], input=own, text=True, capture_output=True, timeout=60
        )
        assert lint.returncode == 0 and not lint.stdout.strip(), job + lint.stdout + lint.stderr
