"""`lookalike embed`: see `pipelines.orchestration.jobs.STAGES` (`python -m jobs.embed --help`)."""
import sys

from pipelines.orchestration.jobs import main

if __name__ == "__main__":
    sys.exit(main("embed"))
