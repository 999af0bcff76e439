"""Why an export stops: bad input (:class:`ExportError`) or an export that disagrees with its card."""

from __future__ import annotations

from search.errors import MicronetError


class ExportError(MicronetError):
    """An export that cannot be made: an unknown trial, no checkpoint, an unusable output folder."""


class VerificationError(Exception):
    """A reloaded artifact disagrees with the model card (not bad input: the export itself is wrong)."""
