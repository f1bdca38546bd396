"""The error a user can fix by changing the command line.

main.py reports every error class of the project in one line on stderr, with exit code 2 for a
UsageError (a flag, a config value, or a path given for a purpose it cannot serve) and 1 for a
failure (a workdir whose files do not fit together, training that diverged, nothing usable in
the data). Library code raises UsageError only for what the user passed in.
"""

from __future__ import annotations


class UsageError(ValueError):
    """The command line asks for something that cannot be done as given (the message names the
    flag, field or file and the reason)."""
