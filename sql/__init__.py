"""The SQL Lookalike runs, shipped in the package as ``lookalike.sql`` (see pipelines/resources.py):
extract templates, the staging dedup, the DuckDB views and the Spark/Trino DDL; analytics/ holds
example queries for analysts."""
