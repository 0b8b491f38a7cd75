"""Error types raised on bad user input.

Every check on user-supplied files, folders and configs raises one of these, with a message that
names the offending path (or key) and says what is wrong, so users never see a traceback from deep
inside torch or Pillow.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Callable, TypeVar

T = TypeVar("T")


class DerainkitError(Exception):
    """Base class of every error the kit raises for bad input."""


class ImageReadError(DerainkitError):
    """An image file is missing, empty, corrupt or not an image."""


class DatasetError(DerainkitError):
    """A data folder is missing, empty, or its pairs do not match."""


class ConfigError(DerainkitError):
    """A config has an unknown key or an invalid value."""


class CheckpointError(DerainkitError):
    """A weights/checkpoint file cannot be loaded into the requested model."""


class InputSizeError(DerainkitError, ValueError):
    """An image (or training crop) is smaller than the model can process, e.g. than one graph patch."""


def naming_file(path: str | Path, fn: Callable[[], T]) -> T:
    """Run ``fn()``; a DerainkitError raised inside (e.g. an image too small for the model) is re-raised
    with ``path`` in front, unless its message already names it."""
    try:
        return fn()
    except DerainkitError as exc:
        if str(path) in str(exc):
            raise
        raise type(exc)(f"{path}: {exc}") from None


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (``derainkit: error: ...``, exit 2), like every other error."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"derainkit: error: {self.prog}: {message} (see --help)\n")
