"""The one user-facing error type of the command line, and its exit codes.

Exit codes of every `dordt` command (docs/gateway-operations.md repeats them):

- 0: done;
- 1: it failed for a reason the message gives (a store or file that cannot be used, a
  verification that found problems, a broker that refused this gateway);
- 2: bad configuration or arguments;
- 3: an environment fault nobody named (an OSError: disk, network, permissions);
- 130: interrupted (Ctrl-C).

Any other exit with a Python traceback is a bug: report it with the output of --debug.
"""

EXIT_FAILED = 1
EXIT_CONFIG = 2
EXIT_ENVIRONMENT = 3


class UserError(Exception):
    """Printed as `dordt: message` (no traceback unless --debug or --verbose); `exit_code`
    2 means bad configuration or arguments, 1 anything else."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED):
        super().__init__(message)
        self.exit_code = exit_code
