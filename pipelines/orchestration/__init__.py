"""Running the stages: Airflow tasks and DAG wiring helpers, execution modes, credentials, alerts and the stage entrypoints."""
