"""Writing outputs so that a failure (a full disk) or a kill never leaves a half-written file or a partial set.

- `atomic_write_text`: a temp file beside the target, then os.replace: the file is the old one or the new one.
- `staged_folder`: outputs are written into a hidden scratch folder and moved into place only when all are done.
  A new folder appears whole (one rename: a kill leaves no folder); in an existing folder each file is replaced
  whole (a kill between two files leaves each file whole, some old, some new: running again finishes the job),
  and a failure puts the old files back.
"""

from __future__ import annotations

import glob
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_write_text", "staged_folder"]


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write `text` to `path` so that readers only ever see the old or the new file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")  # not mkstemp: keep the umask's mode
    try:
        with open(tmp, "x", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@contextmanager
def staged_folder(out: str | Path) -> Iterator[Path]:
    """Yield a scratch folder; when the block ends without error its files are moved into `out`."""
    out = Path(out)
    fresh = not out.exists()
    home = out.parent if fresh else out  # same file system as `out`, so the moves are renames
    prefix = f".{out.name}.partial-" if fresh else ".partial-"
    home.mkdir(parents=True, exist_ok=True)
    for stale in home.glob(glob.escape(prefix) + "*"):  # left by a killed run: never part of the outputs
        shutil.rmtree(stale, ignore_errors=True)
    stage = home / f"{prefix}{uuid.uuid4().hex[:8]}"
    stage.mkdir()  # not mkdtemp: a new `out` gets the usual mode, not 0700
    try:
        yield stage
        if fresh:
            os.replace(stage, out)
        else:
            _replace_files(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def _replace_files(stage: Path, out: Path) -> None:
    """Move every file of `stage` into `out`, each in one rename (so every file there is always whole: the old one or
    the new one); on any error put back what was there before and re-raise."""
    names = sorted(p.name for p in stage.iterdir())
    old = stage / ".old"
    old.mkdir()
    moved: list[str] = []
    try:
        for name in names:
            if (out / name).exists():
                _keep(out / name, old / name)
            moved.append(name)
            os.replace(stage / name, out / name)
    except BaseException:
        for name in reversed(moved):
            if (old / name).exists():
                os.replace(old / name, out / name)
            else:
                (out / name).unlink(missing_ok=True)
        raise


def _keep(path: Path, backup: Path) -> None:
    """A second name for the old file (a copy where hard links are not supported): it stays in place meanwhile."""
    try:
        os.link(path, backup)
    except OSError:
        shutil.copy2(path, backup)
