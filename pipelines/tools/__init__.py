"""The console and analyst tools: the `lookalike` CLI, run summary, HTML report, SQL over the published tables, DDL, the configuration page."""
