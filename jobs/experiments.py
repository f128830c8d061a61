"""`lookalike experiments`: see `lookalike.orchestration.jobs.STAGES` (`python -m lookalike.jobs.experiments --help`)."""
import sys

from lookalike.orchestration.jobs import main

if __name__ == "__main__":
    sys.exit(main("experiments"))
