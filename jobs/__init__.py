"""Worker entrypoints: ``python -m lookalike.jobs.<stage> --ds YYYY-MM-DD [--config FILE]`` or
``spark-submit jobs/<stage>.py …``; each is one call of ``lookalike.orchestration.jobs.main``."""
