"""Operators hear about a failed task through Airflow's notifier interface: the SMTP provider's
notifier, configured by ``alerts.*``, against a real SMTP server on loopback (aiosmtpd). The
publish deadline (a DeadlineAlert on lookalike_nightly) is tested on a real scheduler in
tests/test_scheduler.py."""
import json
import os
import socket
import subprocess
import sys
import time
from email import message_from_bytes
from pathlib import Path

import pytest

from pipelines.alerts import failure_notifiers, publish_deadline
from pipelines.config import ConfigError, load_config
from tests.conftest import write_config

REPO = Path(__file__).resolve().parents[1]


class Inbox:
    """An aiosmtpd handler keeping every message it is sent."""

    def __init__(self):
        self.messages = []

    async def handle_DATA(self, server, session, envelope):
        self.messages.append((envelope.rcpt_tos, message_from_bytes(envelope.original_content)))
        return "250 OK"

    def wait_for(self, predicate, timeout: float):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            found = [message for to, message in self.messages if predicate(to, message)]
            if found:
                return found[0]
            time.sleep(0.5)
        raise AssertionError(f"no such mail within {timeout:.0f} s; got {[m['Subject'] for _, m in self.messages]}")


@pytest.fixture
def smtp_server():
    """A real SMTP server on a loopback port; (the inbox, the AIRFLOW_CONN_SMTP_DEFAULT value)."""
    from aiosmtpd.controller import Controller

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    inbox = Inbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    connection = json.dumps({"conn_type": "smtp", "host": "127.0.0.1", "port": port,
                             "extra": {"disable_ssl": True, "disable_tls": True}})
    yield inbox, connection
    controller.stop()


@pytest.mark.slow
def test_a_failed_task_mails_the_operators(tmp_path, sample_dir, smtp_server):
    inbox, connection = smtp_server
    config = write_config(tmp_path, sample_dir, alerts={"notifier": "smtp", "to": "night-ops@example.com"})
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("LOOKALIKE_")},
           "AIRFLOW_CONN_SMTP_DEFAULT": connection}
    # A day long before the sample's first listing: extract fails (bad input, no retry).
    run = subprocess.run([sys.executable, "-m", "pipelines.cli", "run", "--config", str(config), "--ds", "2020-01-01"],
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
