"""Errors a user can fix.

Every error raised for bad input derives from :class:`MicronetError`; the CLI turns it into one line on stderr and
exit code 2. Anything else is a bug and keeps its traceback.
"""


class MicronetError(Exception):
    """Bad input: the message names what is wrong and how to fix it."""


class ConfigError(MicronetError, ValueError):
    """An architecture, compression or score setting that cannot be used."""


class ArtifactStoreError(RuntimeError):
    """The artifact store refused a write (full, unwritable, gone) at the end of a trial: the trial fails, the runner
    queues it again (its retry resumes from the last checkpoint) and the worker goes on."""
