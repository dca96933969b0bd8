"""Artifacts appear whole or not at all."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Why a write can fail that the user, not raylm, has to fix: the words said for each.
_UNWRITABLE = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
}


def _errno(exc: BaseException) -> int | None:
    """The errno of a failed write, also where a library kept only its text: the
    ``tokenizers`` (Rust) writer raises a plain ``Exception("... (os error 28)")``."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    found = re.search(r"\(os error (\d+)\)", str(exc))
    return int(found.group(1)) if found else None


def unwritable(exc: BaseException) -> str | None:
    """Why ``exc`` says the disk refused a write (full, read-only, no permission), or None."""
    code = _errno(exc)
    return _UNWRITABLE.get(code) if code is not None else None


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike, key: str = "output_dir") -> Iterator[Path]:
    """Yield a sibling temp dir; on success replace ``final`` with it, on error delete it.

    A crash mid-write leaves only a hidden ``.name.*`` dir, never a ``final`` that a
    later stage could mistake for a finished artifact. An earlier ``final`` is moved
    aside, not deleted, until the new one is in place, so a failure at any point leaves
    it as it was. A disk that refuses the write (full, read-only, no permission) is the
    user's to fix: it ends as one ConfigError naming ``key``, the path and the reason.
    """
    from ..config import ConfigError

    final = Path(final).resolve()
    tmp: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=final.parent))
        yield tmp
        for p in [tmp, *tmp.rglob("*")]:  # mkdtemp and some writers use 0700/0600
            p.chmod(0o755 if p.is_dir() else 0o644)
        _replace(tmp, final)
    except Exception as exc:
        reason = unwritable(exc)
        if reason is None:
            raise
        kept = "the earlier one is untouched" if final.exists() else "nothing was written"
        raise ConfigError(key, f"cannot write {final} ({reason}); {kept}") from None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def _replace(new: Path, final: Path) -> None:
    """Rename ``new`` to ``final``; an earlier ``final`` is deleted only once ``new`` is
    in its place, and put back if the rename fails."""
    if not final.exists():
        new.rename(final)
        return
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    final.rename(old)
    try:
        new.rename(final)
    except BaseException:
        old.rename(final)
        raise
    shutil.rmtree(old, ignore_errors=True)
