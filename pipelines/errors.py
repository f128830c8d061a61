"""The base of every error Lookalike raises on purpose: its message says what to fix."""


class LookalikeError(Exception):
    """Bad input, a failed check or a missing prerequisite; reported as one line, never a traceback."""
