"""Worker entrypoints: ``python -m jobs.<stage> --ds YYYY-MM-DD [--config FILE]``.

Each is a thin ``main(argv) -> int`` over ``pipelines``; ``spark-submit jobs/embed.py`` works too.
"""
