"""The monitoring files without a Flow: alert rules through promtool (syntax and unit tests),
the Grafana dashboard's structure, and the generated Kubernetes manifests."""

import json
import subprocess

import pytest
import yaml

from devtools.offline_flow import ROOT
from scripts import monitoring_manifests

MONITORING = ROOT / 'monitoring'
DATASOURCE = {'type': 'prometheus', 'uid': '${datasource}'}
GRID_COLUMNS = 24


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ['promtool', *args], cwd=MONITORING, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize(
    'command',
    [
        ('check', 'rules', 'alerts.yml'),
        ('test', 'rules', 'alerts_test.yml'),
        ('check', 'config', 'prometheus-local.yml'),
    ],
)
def test_promtool(command):
    result = promtool(*command)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test():
    rules = yaml.safe_load((MONITORING / 'alerts.yml').read_text())
    tests = yaml.safe_load((MONITORING / 'alerts_test.yml').read_text())
    alerts = {rule['alert'] for group in rules['groups'] for rule in group['rules']}
    firing = {
        case['alertname']
        for test in tests['tests']
        for case in test['alert_rule_test']
        if case['exp_alerts']
    }
    assert alerts == firing


def test_dashboard_is_a_grafana_dashboard():
    """What Grafana needs to load and lay out the dashboard (no Grafana is installable here)."""
    dashboard = json.loads((MONITORING / 'dashboard.json').read_text())
    assert dashboard['schemaVersion'] >= 36 and dashboard['uid'] and dashboard['title']
    [variable] = dashboard['templating']['list']
    assert (variable['name'], variable['type'], variable['query']) == (
        'datasource',
        'datasource',
        'prometheus',
    )
    panels = dashboard['panels']
    assert len({panel['id'] for panel in panels}) == len(panels)
    for panel in panels:
        grid = panel['gridPos']
        assert grid['x'] + grid['w'] <= GRID_COLUMNS and grid['h'] > 0, panel['title']
        if panel['type'] == 'row':
            continue
        assert panel['datasource'] == DATASOURCE and panel['targets'], panel['title']
        for target in panel['targets']:
            assert target['datasource'] == DATASOURCE and target['expr'].strip(), panel['title']
        assert len({target['refId'] for target in panel['targets']}) == len(panel['targets'])


def test_committed_manifests_match_their_sources():
    """k8s/monitoring/ is generated from monitoring/: `make monitoring-manifests` after an edit."""
    manifests = monitoring_manifests.MANIFESTS
    for name, text in monitoring_manifests.manifests().items():
        assert (manifests / name).read_text() == text, f'{name} is stale'
    configmap = yaml.safe_load((manifests / 'grafana-dashboard.yml').read_text())
    assert json.loads(configmap['data']['speech2image.json']) == json.loads(
        (MONITORING / 'dashboard.json').read_text()
    )
    assert configmap['metadata']['labels']['grafana_dashboard'] == '1'
    rule = yaml.safe_load((manifests / 'prometheus-rule.yml').read_text())
    assert rule['spec'] == yaml.safe_load((MONITORING / 'alerts.yml').read_text())
