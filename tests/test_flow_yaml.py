"""flow.yml is flow.py's Flow: regenerated, it is unchanged; loaded by jina, it has the same pods."""

from pathlib import Path

import yaml
from jina import Flow

import flow as flow_module

ROOT = Path(flow_module.__file__).resolve().parent


def test_committed_flow_yml_is_what_flow_py_exports(tmp_path, monkeypatch):
    for name in list(__import__('os').environ):
        if name.startswith(flow_module.ENV_PREFIX):
            monkeypatch.delenv(name)
    exported = tmp_path / 'flow.yml'
    flow_module.export_yaml(flow_module.parse_args([]), exported)
    assert exported.read_text() == (ROOT / 'flow.yml').read_text(), 'run `make flow.yml`'


def test_jina_loads_flow_yml_as_the_same_flow(monkeypatch):
    monkeypatch.chdir(ROOT)
    from_yaml = Flow.load_config('flow.yml')
    from_python = flow_module.build_flow(flow_module.parse_args([]))
    assert list(from_yaml._deployment_nodes) == list(from_python._deployment_nodes)
    for name in ('whisper', 'stablediffusion'):
        yaml_args = from_yaml._deployment_nodes[name].args
        python_args = from_python._deployment_nodes[name].args
        for field in (
            'uses_with',
            'replicas',
            'port_monitoring',
            'monitoring',
            'uses_dynamic_batching',
        ):
            assert getattr(yaml_args, field) == getattr(python_args, field), (name, field)
        assert Path(yaml_args.uses).resolve() == Path(python_args.uses).resolve()
    assert from_yaml.port == from_python.port == [54322, 54323, 54324]
    assert from_yaml.protocol == from_python.protocol


def test_flags_and_environment_reach_the_executors(monkeypatch):
    monkeypatch.setenv('S2I_WHISPER_MODEL', 'small')
    args = flow_module.parse_args(['--diffusion-model', 'my/model', '--diffusion-replicas', '2'])
    spec = flow_module.flow_spec(args)
    whisper, diffusion = spec['executors']
    assert whisper['uses_with'] == {'model': 'small'}
    assert diffusion['uses_with'] == {'model': 'my/model'}
    assert diffusion['replicas'] == 2
    # A flag beats the environment.
    assert flow_module.parse_args(['--whisper-model', 'tiny']).whisper_model == 'tiny'


def test_flow_yml_carries_jcloud_resources():
    spec = yaml.safe_load((ROOT / 'flow.yml').read_text())
    assert spec['jcloud']
    gpu = {e['name']: e['jcloud']['resources'].get('gpu') for e in spec['executors']}
    assert gpu['stablediffusion'] == 1


def test_batch_and_thread_flags_reach_the_executors():
    args = flow_module.parse_args(
        ['--batch-size', '2', '--diffusion-threads', '1', '--whisper-threads', '3']
    )
    whisper, diffusion = flow_module.flow_spec(args)['executors']
    assert diffusion['uses_with'] == {'max_batch_size': 2, 'threads': 1}
    assert whisper['uses_with'] == {'threads': 3}
    assert 'uses_dynamic_batching' not in diffusion  # the Executor batches; jina holds nothing
