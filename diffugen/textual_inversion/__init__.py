"""Textual inversion (paper sec. 3.4): teach the model a new concept's token from a few images."""

from .training import TextualInversionResult, checkpoint_path, train_textual_inversion

__all__ = ["TextualInversionResult", "checkpoint_path", "train_textual_inversion"]
