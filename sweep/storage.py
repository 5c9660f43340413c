"""Where a sweep's Tune results live: a local or shared folder, or an object-store URI, as Tune takes them.

    root = resolve_storage("sweep-results", workdir)      # -> "/abs/path/sweep-results"
    root = resolve_storage("s3://bucket/sweeps", workdir)  # kept as it is
    write_text(join(root, "exp", "sweep.json"), text)     # pyarrow.fs underneath, as Tune uses

On a multi-node Ray cluster every node writes checkpoints there, so it must be shared storage: a
filesystem every node mounts, or an object store (s3://, gs://; file:// for a local check).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
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
    return read_bytes(path).decode()


def read_bytes(path: str) -> bytes:
    fs, inner = _fs(path)
    with fs.open_input_stream(inner) as f:
        return f.read()


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


@dataclass
class Usage:
    """Bytes a sweep's Tune folder holds, by kind."""

    checkpoints: int = 0  # every trial's checkpoint_* folders
    evaluation: int = 0  # every trial's evaluation/ folder: report, tables, plots, WAVs
    other: int = 0  # Tune's records (result.json, experiment state), the summary, the searcher's state
    per_trial_checkpoints: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return self.checkpoints + self.evaluation + self.other


def usage(experiment_dir: str) -> Usage:
    """What `experiment_dir` (a folder or URI) holds, summed by kind."""
    fs, inner = _fs(experiment_dir)
    found = Usage()
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        return found
    for info in fs.get_file_info(pafs.FileSelector(inner, recursive=True)):
        if info.type != pafs.FileType.File:
            continue
        parts = posixpath.relpath(info.path, inner).split("/")
        kind = parts[1] if len(parts) > 2 else ""
        if kind.startswith("checkpoint_"):
            found.checkpoints += info.size
            found.per_trial_checkpoints[parts[0]] = found.per_trial_checkpoints.get(parts[0], 0) + info.size
        elif kind == "evaluation":
            found.evaluation += info.size
        else:
            found.other += info.size
    return found


def folder_bytes(path: Path) -> int:
    """Bytes of the files under a local folder (0 if it does not exist)."""
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def human(n: float) -> str:
    """1536 -> '1.5 KB' (decimal units, as `du --si`)."""
    for unit in ("B", "KB", "MB", "GB"):
        if abs(n) < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
