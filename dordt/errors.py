"""The one user-facing error type of the command line."""


class UserError(Exception):
    """Printed as `dordt: message` (no traceback unless --verbose); `exit_code` 2 means
    bad configuration or arguments, 1 anything else."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code
