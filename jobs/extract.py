"""`lookalike extract`: see `lookalike.orchestration.jobs.STAGES` (`python -m lookalike.jobs.extract --help`)."""
import sys

from lookalike.orchestration.jobs import main

if __name__ == "__main__":
    sys.exit(main("extract"))
