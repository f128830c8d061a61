"""The Airflow DAG files, shipped in the package as ``pipelines.dags``: point a DAGs folder at
``lookalike dags-folder`` (or this folder in a checkout)."""
