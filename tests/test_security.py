"""Secrets and exposure: the API key on every protocol, CORS for one origin, and the Hugging Face
token nowhere in logs, errors, metrics, exports or answers. The Flow runs as `python flow.py` in
its own process, as deployed, with the token and the key in its environment."""

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from devtools.offline_flow import ROOT, free_ports, serve_flow_process
from speech2image.client import ServiceError, send
from speech2image.schema import SpeechDoc
from tests.support import poll_until

API_KEY = secrets.token_hex(16)
HF_TOKEN = 'hf_' + secrets.token_hex(20)  # the value grepped for everywhere
PAGE_ORIGIN = 'http://page.example'
START_SECONDS = 180


@pytest.fixture(scope='module')
def secured_flow(tmp_path_factory):
    """`python flow.py` on the offline models with HF_TOKEN and S2I_API_KEY set, logging at DEBUG
    into a file; yields (its addresses, log path)."""
    log = tmp_path_factory.mktemp('secured') / 'flow.log'
    env = {'HF_TOKEN': HF_TOKEN, 'S2I_API_KEY': API_KEY, 'JINA_LOG_LEVEL': 'DEBUG'}
    with serve_flow_process(
        '--cors-origin', PAGE_ORIGIN, env=env, log=log, wait_ready=wait_until_serving
    ) as running:
        yield (
            {
                'grpc': running.grpc,
                'http': running.http,
                'websocket': running.websocket,
                'metrics': [running.port_monitoring + offset for offset in range(3)],
            },
            log,
        )


def wait_until_serving(running, process):
    """Until a keyed request is answered: the readiness dry run carries no key."""

    def answered() -> bool:
        assert process.poll() is None, 'flow.py exited'
        send(running.grpc, '/transcribe', [SpeechDoc(text='ready?')], {}, API_KEY)
        return True

    poll_until(answered, START_SECONDS, 'flow.py did not serve', interval=1, ignore=(ServiceError,))


@pytest.mark.parametrize('protocol', ['grpc', 'http', 'websocket'])
def test_the_key_is_required_on_every_protocol(secured_flow, protocol):
    addresses, _ = secured_flow
    with pytest.raises(ServiceError, match='403|API key'):
        send(addresses[protocol], '/generate', [SpeechDoc(text='a cat')], {})
    with pytest.raises(ServiceError, match='403|API key'):
        send(addresses[protocol], '/generate', [SpeechDoc(text='a cat')], {}, 'wrong-key')
    [doc] = send(addresses[protocol], '/generate', [SpeechDoc(text='a cat')], {}, API_KEY)
    assert len(doc.matches) == 1


def test_http_answers_401_and_health_checks_stay_open(secured_flow):
    addresses, _ = secured_flow
    response = requests.post(
        f'{addresses["http"]}/generate', json={'data': [{'text': 'a'}]}, timeout=30
    )
    assert response.status_code == 401
    assert response.headers['www-authenticate'] == 'Bearer'
    assert 'API key' in response.json()['detail']
    assert requests.get(f'{addresses["http"]}/', timeout=30).status_code == 200  # probes
    assert requests.get(f'{addresses["http"]}/status', timeout=30).status_code == 401


def test_cors_allows_the_page_origin_only(secured_flow):
    addresses, _ = secured_flow
    preflight = {
        'Access-Control-Request-Method': 'POST',
        'Access-Control-Request-Headers': 'authorization,content-type',
    }
    allowed = requests.options(
        f'{addresses["http"]}/generate', timeout=30, headers={'Origin': PAGE_ORIGIN, **preflight}
    )
    assert allowed.status_code == 200
    assert allowed.headers['access-control-allow-origin'] == PAGE_ORIGIN
    other = requests.options(
        f'{addresses["http"]}/generate',
        timeout=30,
        headers={'Origin': 'http://evil.example', **preflight},
    )
    assert other.status_code == 400
    assert 'access-control-allow-origin' not in other.headers


def test_the_hf_token_appears_nowhere(secured_flow, tmp_path):
    addresses, log = secured_flow
    seen = []  # everything a user or an operator can see
    for endpoint, docs, parameters in [
        ('/generate', [SpeechDoc(text='')], {}),
        ('/generate', [SpeechDoc(text='a')], {'num_images': 99}),
        ('/', [SpeechDoc(bytes_=b'not audio')], {}),
        ('/transcribe', [SpeechDoc(uri='/etc/passwd')], {}),
    ]:
        with pytest.raises(ServiceError) as error:
            send(addresses['grpc'], endpoint, docs, parameters, API_KEY)
        seen.append(str(error.value))
    [doc] = send(addresses['grpc'], '/generate', [SpeechDoc(text='a cat')], {}, API_KEY)
    seen += [doc.model_dump_json(), doc.matches[0].bytes_.decode('latin-1')]
    seen += [
        requests.get(f'http://127.0.0.1:{port}/metrics', timeout=30).text
        for port in addresses['metrics']
    ]
    seen.append(
        requests.get(
            f'{addresses["http"]}/status',
            timeout=30,
            headers={'Authorization': f'Bearer {API_KEY}'},
        ).text
    )
    seen.append(model_load_failure_output(tmp_path))
    seen.append(exported_yaml(tmp_path))
    seen.append(log.read_text(errors='replace'))
    assert all(text for text in seen)
    for text in seen:
        assert HF_TOKEN not in text
        assert API_KEY not in text


def model_load_failure_output(tmp_path: Path) -> str:
    """What the diffusion Executor prints when its model cannot be loaded, run as it runs in a
    container (`jina executor`), with the token in its environment."""
    env = {
        **os.environ,
        'HF_TOKEN': HF_TOKEN,
        'HF_HUB_OFFLINE': '1',
        'JINA_LOG_LEVEL': 'DEBUG',
        'PYTHONPATH': str(ROOT),
    }
    jina = Path(sys.executable).parent / 'jina'
    result = subprocess.run(
        [
            str(jina),
            'executor',
            '--uses',
            'executors/stablediffusion/config.yml',
            '--uses-with',
            '{"model": "some-org/private-model"}',
            '--host',
            '127.0.0.1',
            '--port',
            str(free_ports(1)[0]),
        ],
        cwd=ROOT,
        env=env,
        timeout=120,
        capture_output=True,
        text=True,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert 'ModelLoadError' in output and 'cannot load diffusers model' in ' '.join(output.split())
    return output


def exported_yaml(tmp_path: Path) -> str:
    path = tmp_path / 'flow.yml'
    env = {**os.environ, 'HF_TOKEN': HF_TOKEN, 'S2I_API_KEY': API_KEY}
    subprocess.run(
        [sys.executable, 'flow.py', '--export-yaml', str(path)],
        cwd=ROOT,
        env=env,
        check=True,
        timeout=60,
    )
    return path.read_text()


def test_garbage_is_one_log_line_each_and_no_traceback(secured_flow):
    """Garbage on each protocol, with the key: each is answered 4xx and logged as one line;
    every garbage request used to log a full traceback (14.6 MB of log in 30 s)."""
    from tests.protocols import INVALID, grpc_raw_call, websocket_exchange

    addresses, log = secured_flow
    before = log.stat().st_size
    bearer = f'Bearer {API_KEY}'
    answer = grpc_raw_call(
        addresses['grpc'], [b'\x00garbage'], metadata=(('authorization', bearer),)
    )
    assert answer.status == INVALID, answer
    response = requests.post(
        f'{addresses["http"]}/generate',
        data=b'{"data": [{"text": "a"}], "parameters": ' + b'[' * 5000 + b']' * 5000 + b'}',
        headers={'Authorization': bearer, 'Content-Type': 'application/json'},
        timeout=30,
    )
    assert response.status_code == 400, response.text
    closed = websocket_exchange(
        addresses['websocket'], [b'\x00garbage'], headers={'Authorization': bearer}
    )
    assert closed.code == 1007, closed

    def logged() -> str:
        with open(log, 'rb') as file:
            file.seek(before)
            return file.read().decode(errors='replace')

    poll_until(lambda: logged().count('request answered 4') >= 3, 10, 'refusals not logged')
    new = logged()
    assert 'Traceback' not in new, new
    for protocol in ('gRPC', 'HTTP', 'WebSocket'):
        assert f'{protocol} request answered 4' in new, new
