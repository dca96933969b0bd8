"""A run's output location: a directory path, or a URI that pyarrow's filesystems open.

On one machine, or on a cluster whose nodes all mount the same storage, ``output_dir``
is a path and everything is written there directly. On a cluster with only an object
store (``s3://bucket/run``, ``gs://bucket/run``, any ``pyarrow.fs.FileSystem.from_uri``
URI, query options such as ``?endpoint_override=`` included) nothing is shared but the
store, so each process works in a node-local mirror of the run and copies what it
wrote up (:meth:`RunDir.push`) and what it needs down (:meth:`RunDir.pull`). Ray Train
writes its checkpoints to the store itself (:meth:`RunDir.storage`), which is what lets
a worker restarted on another node, or a ``resume=true`` run from another machine,
continue the run. A model a run starts from (``model.init_from``, a compress teacher,
its tokenizer) may be a URI too: each process that loads it fetches its own copy
(:func:`fetch`, :func:`fetch_tokenizer`). Credentials come from where pyarrow looks
(``AWS_*`` variables, instance roles, ``GOOGLE_APPLICATION_CREDENTIALS``), never from
the config.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def is_uri(location: str | Path) -> bool:
    return bool(_URI.match(str(location)))


def join(location: str, *names: str) -> str:
    """``location/name/...``; in a URI the names go into the path, before any ``?query``."""
    base, sep, query = str(location).partition("?")
    return "/".join([base.rstrip("/"), *names]) + sep + query


def override(key: str, location: str | Path) -> str:
    """``key=location`` as a Hydra override; quoted when the value would not parse bare
    (an S3 URI's ``?endpoint_override=...`` holds '=')."""
    value = str(location)
    return f"{key}='{value}'" if is_uri(value) else f"{key}={value}"


def uri_of(location: str, path: str) -> str:
    """A path inside the store of ``location`` (as its filesystem names it, e.g. a Ray
    checkpoint's ``path``) as a URI with ``location``'s scheme and options."""
    base = RunDir(location)
    rel = Path(path).relative_to(base.path).as_posix()
    return base.uri(rel) if rel != "." else base.location


# What AutoTokenizer.from_pretrained reads from a model directory (config.json names the
# tokenizer class when tokenizer_config.json does not).
_TOKENIZER_FILES = re.compile(
    r"^(tokenizer.*|vocab\..*|merges\.txt|special_tokens_map\.json|added_tokens\.json|config\.json)$"
)


def fetch_tokenizer(location: str, into: Path) -> Path:
    """The tokenizer files of the directory at URI ``location``, copied to ``into``
    (not the weights beside them)."""
    import pyarrow.fs

    store = RunDir(location, key="tokenizer.path")
    into.mkdir(parents=True, exist_ok=True)
    for info in store.fs.get_file_info(pyarrow.fs.FileSelector(store.path)):
        name = info.path.rsplit("/", 1)[-1]
        if info.type == pyarrow.fs.FileType.File and _TOKENIZER_FILES.match(name):
            store.pull(name, into / name)
    return into


def fetch(location: str, into: Path, key: str) -> Path:
    """A directory at ``location`` as a local path: a path as it is, a URI's directory
    copied to ``into`` (a model a training run starts from, read by every worker)."""
    if not is_uri(location):
        return Path(location)
    store = RunDir(location, key=key)
    if not store.exists(""):
        from ..config import ConfigError

        raise ConfigError(key, f"{location}: nothing there in the store")
    return store.pull("", into)


class RunDir:
    """One run's outputs at ``location``; ``local`` is where this process reads and
    writes them (the location itself for a path, a node-local mirror for a URI).

    ``run_id`` names the mirror: the same id on a node means the same mirror, so a
    worker restarted on the node keeps what it had; a new id starts from the store."""

    def __init__(self, location: str, run_id: str = "", key: str = "output_dir"):
        self.location = str(location)
        self.remote = is_uri(self.location)
        if not self.remote:
            self.fs, self.path = None, self.location
            self.local = Path(self.location)
            return
        import pyarrow.fs

        try:
            self.fs, self.path = pyarrow.fs.FileSystem.from_uri(self.location)
        except (pyarrow.ArrowException, ValueError, OSError) as exc:
            from ..config import ConfigError

            # e.g. an unknown scheme, or S3 failing to look up the bucket's region
            raise ConfigError(
                key,
                f"{self.location} is not a URI pyarrow can open: {str(exc).splitlines()[0]}",
            ) from None
        self.path = self.path.rstrip("/")
        key = hashlib.sha256(f"{self.location}\0{run_id}".encode()).hexdigest()[:16]
        self.local = Path(tempfile.gettempdir()) / "raylm-runs" / key

    def __str__(self) -> str:
        return self.location

    def uri(self, *names: str) -> str:
        return join(self.location, *names)

    def _remote(self, name: str) -> str:
        return f"{self.path}/{name}" if name else self.path

    def _info(self, name: str):
        return self.fs.get_file_info(self._remote(name))

    def exists(self, name: str) -> bool:
        if not self.remote:
            return (self.local / name).exists()
        import pyarrow.fs

        return self._info(name).type != pyarrow.fs.FileType.NotFound

    def read_text(self, name: str) -> str | None:
        """The file ``name`` at the location, read straight from the store; None if absent."""
        if not self.remote:
            p = self.local / name
            return p.read_text() if p.is_file() else None
        try:
            with self.fs.open_input_stream(self._remote(name)) as f:
                return f.read().decode()
        except FileNotFoundError:
            return None

    def remove(self, name: str) -> None:
        """Delete ``name`` (a file or a directory) at the location; absent is fine."""
        import pyarrow.fs

        if not self.remote:
            p = self.local / name
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            elif p.exists() or p.is_symlink():
                p.unlink()
            return
        kind = self._info(name).type
        if kind == pyarrow.fs.FileType.Directory:
            self.fs.delete_dir(self._remote(name))
        elif kind == pyarrow.fs.FileType.File:
            self.fs.delete_file(self._remote(name))

    def pull(self, name: str, into: Path | None = None) -> Path:
        """Copy ``name`` (file or directory) from the store to ``into`` (default: the same
        name in the mirror) and return that local path; a no-op for a path location or
        a name the store lacks."""
        import pyarrow.fs

        dest = into or self.local / name
        if not self.remote:
            return dest
        kind = self._info(name).type
        if kind == pyarrow.fs.FileType.NotFound:
            return dest
        if kind == pyarrow.fs.FileType.Directory:
            dest.mkdir(parents=True, exist_ok=True)
        else:
            dest.parent.mkdir(parents=True, exist_ok=True)
        pyarrow.fs.copy_files(
            self._remote(name),
            str(dest),
            source_filesystem=self.fs,
            destination_filesystem=pyarrow.fs.LocalFileSystem(),
        )
        return dest

    def push(self, name: str, source: Path | None = None, last: str | None = None) -> None:
        """Copy ``source`` (default: ``name`` in the mirror; a file or a directory) up to
        ``name`` in the store, file by file, over what is there. ``last`` is written after
        every other file: an object store has no rename, so a reader that waits for that
        file (``raylm.json`` for a model) never sees a half-uploaded directory as whole."""
        import pyarrow.fs

        source = source or self.local / name
        if not self.remote or not source.exists():
            return
        files = (
            [source] if source.is_file() else sorted(p for p in source.rglob("*") if p.is_file())
        )
        files.sort(key=lambda p: p.name == last)
        local = pyarrow.fs.LocalFileSystem()
        for f in files:
            rel = "" if f == source else "/" + f.relative_to(source).as_posix()
            target = self._remote(name) + rel
            self.fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
            pyarrow.fs.copy_files(
                str(f), target, source_filesystem=local, destination_filesystem=self.fs
            )

    def storage(self, name: str) -> dict[str, Any]:
        """``RunConfig`` keyword arguments that put Ray Train's storage at ``name``."""
        if not self.remote:
            return {"storage_path": str(self.local / name)}
        return {"storage_path": self._remote(name), "storage_filesystem": self.fs}

    def clean_mirror(self) -> None:
        if self.remote:
            shutil.rmtree(self.local, ignore_errors=True)
