"""The content folder: where email content files and attachments are read from, and only there.

A flow document names a ``content_file`` or an attachment by a path relative to the folder
(``CONTENT_ROOT``; unset: ``flows/`` in the project folder). A path that is absolute, climbs out
with ``..`` or leads out through a symbolic link names a file of the machine rather than content
of the flow (``/etc/passwd`` would be emailed), so it is refused: by validation before a flow is
saved and again when a message is built, since files and links may change in between.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from models.database import PROJECT_ROOT
from models.settings import Settings, get_settings


class ContentFileError(ValueError):
    """A content file or attachment that cannot be read from the content folder."""


class OutsideContentFolder(ContentFileError):
    """The path cannot name a file in the content folder: it leads outside it (or is empty)."""


class MissingContentFile(ContentFileError):
    """Nothing (or no file) at the path in the content folder."""


def content_folder(settings: Settings | None = None) -> Path:
    """The folder content files and attachments are read from."""
    configured = (settings or get_settings()).content_root
    return configured if configured is not None else PROJECT_ROOT / "flows"


def path_problem(relative: str) -> str | None:
    """What makes ``relative`` unfit to name a file in the content folder, whatever the folder
    holds (None: nothing)."""
    if not relative.strip():
        return "an empty path"
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in relative):
        return "a path with a control character"
    windows = PureWindowsPath(relative)
    if PurePosixPath(relative).is_absolute() or windows.drive or windows.root:
        return f"{relative!r} is outside the content folder (an absolute path)"
    if ".." in windows.parts:  # the Windows reading splits on both kinds of slash
        return f"{relative!r} is outside the content folder (it climbs out with ..)"
    return None


def content_path(folder: Path, relative: str) -> Path:
    """The file ``relative`` names inside ``folder``; raises ``ContentFileError`` when it is not
    a file there, or leads outside it (through ``..``, an absolute path or a symbolic link)."""
    problem = path_problem(relative)
    if problem is not None:
        raise OutsideContentFolder(problem)
    root = folder.resolve()
    path = (root / relative).resolve()
    if not path.is_relative_to(root):
        raise OutsideContentFolder(f"{relative!r} is outside the content folder")
    if not path.is_file():
        raise MissingContentFile(f"{relative!r} not found in {root}")
    return path
