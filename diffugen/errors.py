"""Exceptions that DiffuGen raises for problems a user can fix."""


class DiffuGenError(Exception):
    """Base class: the message is meant to be shown to the user as is."""


class ConfigError(DiffuGenError):
    """The config is invalid; the message names each bad field, its value and what was expected."""


class ModelNotFoundError(DiffuGenError):
    """A diffusion model, checkpoint or embedding could not be found; the message says where we looked."""
