"""The two kinds of failure the command-line tools report, and their exit codes."""

from __future__ import annotations


class UsageError(Exception):
    """Something the user typed is wrong. Exit 2; nothing has been written."""

    exit_code = 2


class RunError(Exception):
    """The run could not be completed (network, disk, model). Exit 1."""

    exit_code = 1


class Terminated(BaseException):
    """SIGTERM arrived (what SLURM, Kubernetes and ``kill`` send first). Exit 143.

    A BaseException, like KeyboardInterrupt, so that it unwinds through every ``finally``
    (the lock is released, the piece in flight is never marked complete) and past the
    ``except Exception`` handlers of libraries.
    """

    exit_code = 143
