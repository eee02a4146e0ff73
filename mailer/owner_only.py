"""Files that hold personal data or secrets are the owner's alone: folders 0700, files 0600.

The SQLite database (it keeps the unsubscribe secret when the environment has none), its
-wal and -shm files (SQLite gives them the database file's mode), the maildir outbox and the
preview folder are created so, whatever the umask; one that exists with a wider mode is left
as it is and named in a warning with the `chmod` that fixes it.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

FILE_MODE = 0o600
FOLDER_MODE = 0o700


def make_folder(path: Path) -> None:
    """Create `path` and any missing parents, each created one owner-only (existing ones are kept)."""
    missing = []
    current = Path(path)
    while not current.exists() and current != current.parent:
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        folder.mkdir(mode=FOLDER_MODE, exist_ok=True)


def write_file(path: Path, data: bytes) -> None:
    """Write `data` to `path`, created owner-only before a byte is written (replaced if it exists)."""
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def create_file(path: Path) -> None:
    """Create `path` empty and owner-only if it does not exist (before a library opens it with
    the umask's mode); a missing folder is left for that library to report."""
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    except OSError:
        pass


def too_open(path: Path) -> str | None:
    """The warning for an existing file or folder other users may read, else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if not mode & 0o077:
        return None
    fix = f"chmod -R go-rwx {path}" if stat.S_ISDIR(mode) else f"chmod 600 {path}"
    return f"{path} is open to other users (mode {stat.S_IMODE(mode):04o}) and holds personal data: run `{fix}`."
