"""The alert rules and the dashboard in ``deploy/``, checked by Debian's promtool.

* ``promtool check rules`` passes on ``deploy/prometheus/authsvc-rules.yml``;
* ``promtool test rules`` runs ``authsvc-rules.test.yml``: every alert fires on
  a synthetic series of trouble and stays quiet on a normal one;
* every alert has a summary, a description and a severity;
* the dashboard has the ``node`` variable, a datasource input and a pinned
  ``schemaVersion``, and every panel has a PromQL query (the queries run
  against a real Prometheus in ``test_prometheus.py``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.services.prometheus import promtool

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
RULES = DEPLOY / "prometheus" / "authsvc-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "authsvc-rules.test.yml"
DASHBOARD = DEPLOY / "grafana" / "authsvc-dashboard.json"


def test_promtool_check_rules_passes() -> None:
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_fires_in_the_rule_unit_tests() -> None:
    done = promtool("test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = set(re.findall(r"^\s*- alert: (\w+)$", RULES.read_text(), re.M))
    tested = set(re.findall(r"^\s*alertname: (\w+)$", RULE_TESTS.read_text(), re.M))
    assert alerts == tested
    fired = set(re.findall(r"alertname: (\w+)\n\s*exp_alerts:\n\s*- exp_labels",
                           RULE_TESTS.read_text()))
    assert fired == alerts, alerts - fired


def test_every_alert_says_what_to_do_and_how_bad() -> None:
    text = RULES.read_text()
    blocks = re.split(r"^\s*- alert: ", text, flags=re.M)[1:]
    assert len(blocks) >= 10
    for block in blocks:
        name = block.split("\n", 1)[0]
        assert re.search(r"severity: (page|warning)\n", block), name
        assert "summary: " in block, name
        assert "description: " in block, name


def test_the_dashboard_is_importable_for_one_pool() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard["schemaVersion"], int)
    assert [i["name"] for i in dashboard["__inputs"]] == ["DS_PROMETHEUS"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["node"]["allValue"] == ".*"
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert 'instance=~"$node"' in target["expr"], (panel["title"], target["expr"])
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}"
