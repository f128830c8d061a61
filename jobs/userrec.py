"""`lookalike userrec`: see `pipelines.orchestration.jobs.STAGES` (`python -m jobs.userrec --help`)."""
import sys

from pipelines.orchestration.jobs import main

if __name__ == "__main__":
    sys.exit(main("userrec"))
