"""`lookalike publish`: see `lookalike.orchestration.jobs.STAGES` (`python -m lookalike.jobs.publish --help`)."""
import sys

from lookalike.orchestration.jobs import main

if __name__ == "__main__":
    sys.exit(main("publish"))
