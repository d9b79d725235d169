"""One exception type for user-facing failures: the CLI prints its message as one line."""


class HarnessError(Exception):
    """A mistake in input or environment that the user can fix; never shown as a traceback."""


class DivergedError(HarnessError):
    """Training produced a non-finite loss."""
