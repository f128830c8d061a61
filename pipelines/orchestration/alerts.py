"""Telling operators when a night goes wrong, through Airflow's notifier interface.

- ``alerts.notifier: smtp`` (the SMTP provider's ``SmtpNotifier``, connection
  ``alerts.smtp_conn_id``) or ``slack`` (the Slack provider's ``SlackWebhookNotifier``, connection
  ``alerts.slack_conn_id``): every failed task notifies, besides the log line it always writes.
- a night the drift gate refused waits for an operator's approval (``approve_drift``): the same notifier tells
  them so, with the breached bounds;
- ``alerts.publish_deadline_minutes`` > 0: a ``DeadlineAlert`` on ``lookalike_nightly`` fires the
  same notifier when a run has not published within that many minutes of being queued (run by
  Airflow's triggerer).

DAG files call these at parse time: the providers are imported only when a notifier is chosen.
"""
from __future__ import annotations

from datetime import timedelta

from lookalike.config import Config, ConfigError

FAILED_SUBJECT = ("Lookalike: task {{ ti.task_id }} of {{ ti.dag_id }} failed for "
                  "{{ params.ds or dag_run.partition_key or ds }}")
FAILED_BODY = ("Task {{ ti.task_id }} of {{ ti.dag_id }} failed (try {{ ti.try_number }}), run {{ run_id }}: "
               "{{ exception }}. Its log is in the Airflow UI; clearing the task reruns it and replaces the "
               "day's partition.")
LATE_SUBJECT = "Lookalike: lookalike_nightly has not published within its deadline"
APPROVAL_SUBJECT = ("Lookalike: ds {{ (ti.xcom_pull(task_ids='publish', key='refused') or {}).get('ds') }} refused by "
                    "the drift gate")
APPROVAL_BODY = ("{{ (ti.xcom_pull(task_ids='publish', key='refused') or {}).get('why') }} Approve or reject it in "
                 "the Airflow UI (task approve_drift of run {{ run_id }}); with no answer it is rejected and the previous day "
                 "stays served.")


def _notifier(settings: dict, subject: str, body: str):
    """``alerts.notifier``'s notifier (smtp or slack; the config allows no other when it loads)."""
    if settings["notifier"] == "smtp":
        from airflow.providers.smtp.notifications.smtp import SmtpNotifier

        return SmtpNotifier(to=settings["to"], from_email=settings["from_email"], subject=subject,
                            html_content=body, smtp_conn_id=settings["smtp_conn_id"])
    try:
        from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier
    except ImportError:
        raise ConfigError("alerts.notifier is slack but the Slack provider is not installed: "
                          "pip install apache-airflow-providers-slack") from None
    return SlackWebhookNotifier(slack_webhook_conn_id=settings["slack_conn_id"], text=f"{subject}\n{body}")


def _settings(cfg: Config) -> dict | None:
    alerts = cfg.alerts
    if alerts.notifier == "none":
        return None
    if alerts.notifier == "smtp" and not alerts.to:
        raise ConfigError("alerts.notifier is smtp but alerts.to names no address")
    return {"notifier": alerts.notifier, "to": alerts.to, "from_email": alerts.from_email,
            "smtp_conn_id": alerts.smtp_conn_id, "slack_conn_id": alerts.slack_conn_id}


def failure_notifiers(cfg: Config) -> list:
    """The notifiers every failed task calls (none by default)."""
    settings = _settings(cfg)
    return [] if settings is None else [_notifier(settings, FAILED_SUBJECT, FAILED_BODY)]


def approval_notifiers(cfg: Config) -> list:
    """The notifiers told when a refused night waits for an operator's approval (none by default)."""
    settings = _settings(cfg)
    return [] if settings is None else [_notifier(settings, APPROVAL_SUBJECT, APPROVAL_BODY)]


def publish_deadline(cfg: Config):
    """The nightly DAG's ``DeadlineAlert``, or None when no deadline or no notifier is configured."""
    settings = _settings(cfg)
    if settings is None or cfg.alerts.publish_deadline_minutes <= 0:
        return None
    from airflow.sdk import AsyncCallback, DeadlineAlert, DeadlineReference

    return DeadlineAlert(reference=DeadlineReference.DAGRUN_QUEUED_AT,
                         interval=timedelta(minutes=cfg.alerts.publish_deadline_minutes),
                         callback=AsyncCallback(deadline_missed, kwargs={"settings": settings}))


async def deadline_missed(settings: dict, context: dict | None = None) -> None:
    """The DeadlineAlert's callback, on the triggerer: notify that a nightly run is late."""
    context = context or {}
    dag_run = context.get("dag_run") or {}
    run_id = dag_run.get("run_id") if isinstance(dag_run, dict) else getattr(dag_run, "run_id", None)
    body = (f"Run {run_id or '?'} of lookalike_nightly was queued more than the configured "
            f"alerts.publish_deadline_minutes ago and has not published yet. Yesterday's tables stay served.")
    notifier = _notifier(settings, LATE_SUBJECT, body)
    await notifier.async_notify(context)
