"""Exceptions that DiffuGen raises for problems a user can fix.

Every one is a :class:`DiffuGenError`: the CLI prints its message as one line and exits with 2, the
operators show it on the form.
"""


class DiffuGenError(Exception):
    """Base class: the message is meant to be shown to the user as is."""


class ConfigError(DiffuGenError):
    """The config is invalid; the message names each bad field, its value and what was expected."""


class ModelNotFoundError(DiffuGenError):
    """A diffusion model, checkpoint or embedding could not be found; the message says where we looked."""


class DatasetError(DiffuGenError):
    """A dataset, view or field is missing, empty or of the wrong kind for what was asked."""


class OutputPathError(DiffuGenError):
    """A path to write to is outside the output root, or cannot be used."""
