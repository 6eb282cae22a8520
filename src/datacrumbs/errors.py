"""The one exception family users see as a message instead of a traceback.

Every module raises a subclass of :class:`DatacrumbsError` whose text is the
sentence the user should read: what went wrong, naming the file or value, and
what to do about it. The CLI prints it as one line and exits non-zero.
"""


class DatacrumbsError(Exception):
    """An error whose message is meant for the user, not a developer."""

    exit_code = 1


class UsageError(DatacrumbsError):
    """A bad command-line value (exit code 2, like argparse)."""

    exit_code = 2


class ConfigError(DatacrumbsError):
    """The site configuration file is missing a value or has a bad one."""


class InvalidJobId(DatacrumbsError, ValueError):
    """A job or run id that is not one of the forms Flux prints."""


class InvalidUser(DatacrumbsError, ValueError):
    """A user name or uid that is not safe or does not exist."""
