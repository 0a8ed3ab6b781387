"""Output folders and files checked before any work: stdlib only, so a command that only coordinates (the parent
of ``ifkit reproduce --jobs N``, each worker before its experiment imports anything) does not import torch.

``ifkit.validation`` re-exports both checks beside the checks of options and data.
"""

from __future__ import annotations

import tempfile
from pathlib import Path


def check_writable_folder(folder: Path, flag: str) -> str | None:
    """A message when ``folder`` cannot be created or written to (None when it can; it is then created)."""
    if folder.exists() and not folder.is_dir():
        return f"{flag} {folder} is a file, not a folder: give a folder (it is created if missing)"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as e:
        return f"{flag} {folder} is not writable ({e.strerror or type(e).__name__}): give a folder you can write to"
    return None


def check_writable_file(path: Path, flag: str) -> str | None:
    """A message when a result file cannot be written at ``path`` (None when it can)."""
    if path.is_dir():
        return f"{flag} {path} is a folder: give a file name, e.g. {path / 'scores.csv'}"
    return check_writable_folder(path.parent, f"{flag} {path}: its folder")


__all__ = ["check_writable_file", "check_writable_folder"]
