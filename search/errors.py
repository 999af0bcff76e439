"""Errors a user can fix.

Every error raised for bad input derives from :class:`MicronetError`; the CLI turns it into one line on stderr and
exit code 2. Anything else is a bug and keeps its traceback.
"""


class MicronetError(Exception):
    """Bad input: the message names what is wrong and how to fix it."""


class ConfigError(MicronetError, ValueError):
    """An architecture, compression or score setting that cannot be used."""
