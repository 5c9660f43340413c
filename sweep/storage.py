"""Where a sweep's Tune results live: a local or shared folder, or an object-store URI, as Tune takes them.

    root = resolve_storage("sweep-results", workdir)      # -> "/abs/path/sweep-results"
    root = resolve_storage("s3://bucket/sweeps", workdir)  # kept as it is
    write_text(join(root, "exp", "sweep.json"), text)     # pyarrow.fs underneath, as Tune uses

On a multi-node Ray cluster every node writes checkpoints there, so it must be shared storage: a
filesystem every node mounts, or an object store (s3://, gs://; file:// for a local check).
"""

from __future__ import annotations

import posixpath
from pathlib import Path

import pyarrow.fs as pafs


def is_uri(storage: str) -> bool:
    return "://" in storage


def resolve_storage(storage: str, workdir: Path) -> str:
    return storage if is_uri(storage) else str((workdir / storage).expanduser().resolve())


def join(root: str, *parts: str) -> str:
    return posixpath.join(root, *parts) if is_uri(root) else str(Path(root).joinpath(*parts))


def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


def exists(path: str) -> bool:
    fs, inner = _fs(path)
    return fs.get_file_info(inner).type != pafs.FileType.NotFound


def read_text(path: str) -> str:
    fs, inner = _fs(path)
    with fs.open_input_stream(inner) as f:
        return f.read().decode()


def write_text(path: str, text: str) -> None:
    fs, inner = _fs(path)
    fs.create_dir(posixpath.dirname(inner), recursive=True)
    with fs.open_output_stream(inner) as f:
        f.write(text.encode())


def sweeps_in(root: str, marker: str) -> list[tuple[str, float]]:
    """(name, modification time) of every folder under `root` that holds `marker`, oldest first."""
    fs, inner = _fs(root)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        return []
    found = []
    for info in fs.get_file_info(pafs.FileSelector(inner)):
        if info.type == pafs.FileType.Directory:
            plan = fs.get_file_info(posixpath.join(info.path, marker))
            if plan.type == pafs.FileType.File:
                found.append((info.base_name, plan.mtime.timestamp() if plan.mtime else 0.0))
    return sorted(found, key=lambda item: item[1])
