"""The Airflow DAG files, shipped in the package as ``lookalike.dags``: point a DAGs folder at
``lookalike dags-folder`` (or this folder in a checkout)."""
