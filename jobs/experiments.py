"""`lookalike experiments`: see `pipelines.orchestration.jobs.STAGES` (`python -m jobs.experiments --help`)."""
import sys

from pipelines.orchestration.jobs import main

if __name__ == "__main__":
    sys.exit(main("experiments"))
