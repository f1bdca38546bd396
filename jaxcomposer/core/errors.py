"""The two kinds of error the command line reports in one line (cli.py).

UsageError (exit code 2): the user can fix it by changing the command line (a flag, a config
value, or a path given for a purpose it cannot serve). Library code raises it only for what the
user passed in.

Failure (exit code 1): the input as given cannot be used (a workdir whose files do not fit
together, nothing usable in the data, a MIDI file that cannot be read, training that diverged).
Every such error class of the project derives from it, so the reporter needs no list of them.
"""

from __future__ import annotations


class UsageError(ValueError):
    """The command line asks for something that cannot be done as given (the message names the
    flag, field or file and the reason)."""


class Failure(Exception):
    """Something the program was given cannot be used (the message names the file or the run
    and the reason); reported in one line with exit code 1."""


class WorkdirError(Failure, ValueError):
    """A workdir's checkpoints, config.json, vocab.json or data are missing, unreadable or do
    not fit together (or do not fit the config given). Raised by workdir_lib.py and
    model/checkpoints.py."""
