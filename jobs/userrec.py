"""`lookalike userrec`: see `lookalike.orchestration.jobs.STAGES` (`python -m lookalike.jobs.userrec --help`)."""
import sys

from lookalike.orchestration.jobs import main

if __name__ == "__main__":
    sys.exit(main("userrec"))
