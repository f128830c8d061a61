"""`lookalike neighbors`: see `pipelines.orchestration.jobs.STAGES` (`python -m jobs.neighbors --help`)."""
import sys

from pipelines.orchestration.jobs import main

if __name__ == "__main__":
    sys.exit(main("neighbors"))
