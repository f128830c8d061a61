"""Operators hear about a failed task through Airflow's notifier interface: the SMTP provider's
notifier, configured by ``alerts.*``, against a real SMTP server on loopback (aiosmtpd). The
publish deadline (a DeadlineAlert on lookalike_nightly) is tested on a real scheduler in
tests/test_scheduler.py."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lookalike.orchestration.alerts import failure_notifiers, publish_deadline
from lookalike.config import ConfigError, load_config
from tests.conftest import write_config

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_a_failed_task_mails_the_operators(tmp_path, sample_dir, smtp_server):
    inbox, connection = smtp_server
    config = write_config(tmp_path, sample_dir, alerts={"notifier": "smtp", "to": "night-ops@example.com"})
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")},
           "AIRFLOW_CONN_SMTP_DEFAULT": connection}
    # A day long before the sample's first listing: extract fails (bad input, no retry).
    run = subprocess.run([sys.executable, "-m", "lookalike.tools.cli", "run", "--config", str(config), "--ds", "2020-01-01"],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=600)
    assert run.returncode != 0 and "no listings created" in run.stdout + run.stderr
    mail = inbox.wait_for(lambda to, m: "night-ops@example.com" in to, timeout=30)
    assert mail["Subject"] == "Lookalike: task extract of lookalike_extract failed for 2020-01-01"
    body = "".join(part.get_payload(decode=True).decode() for part in mail.walk() if not part.is_multipart())
    assert "no listings created" in body
    # the log line stays, with the rerun command
    log = (tmp_path / "airflow" / "logs" / "lookalike_extract-2020-01-01.log").read_text()
    assert "lookalike extract --ds 2020-01-01" in log


def test_notifiers_and_the_deadline_come_from_the_config():
    assert failure_notifiers(load_config(None, environ={})) == []
    assert publish_deadline(load_config(None, environ={})) is None
    cfg = load_config(None, environ={"LOOKALIKE_ALERTS__NOTIFIER": "smtp", "LOOKALIKE_ALERTS__TO": "a@example.com",
                                     "LOOKALIKE_ALERTS__PUBLISH_DEADLINE_MINUTES": "90"})
    (notifier,) = failure_notifiers(cfg)
    assert type(notifier).__name__ == "SmtpNotifier"
    deadline = publish_deadline(cfg)
    assert deadline.interval.total_seconds() == 90 * 60
    with pytest.raises(ConfigError, match="alerts.to"):
        failure_notifiers(load_config(None, environ={"LOOKALIKE_ALERTS__NOTIFIER": "smtp"}))
    with pytest.raises(ConfigError, match="alerts.notifier"):
        failure_notifiers(load_config(None, environ={"LOOKALIKE_ALERTS__NOTIFIER": "pager"}))
