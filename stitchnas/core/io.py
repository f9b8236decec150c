"""Atomic persistence: JSON, CSV result tables, checkpoints.

Every writer goes through a temporary file in the destination directory, ``fsync`` and
``os.replace``, so a run killed mid-write leaves either the old file or the new one, never a
truncated mix. That is what makes resuming a search from its own output files safe.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "ResultsTable",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "file_sha256",
    "load_checkpoint",
    "read_json",
    "save_checkpoint",
]

PathLike = str | os.PathLike[str]


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform, so best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = _read_umask()


def _atomic_write(path: PathLike, write: Any) -> None:
    """Calls ``write(binary_file)`` on a temp file next to ``path``, then renames it over."""
    target = Path(path)
    directory = target.parent
    if not directory.is_dir():
        raise ValueError(f"cannot write {target}: folder {directory} does not exist")
    # mkstemp makes 0600 files; give the result the mode a plain open() would have (or keep
    # the replaced file's mode), so outputs stay readable by the group as usual.
    try:
        mode = target.stat().st_mode & 0o777
    except FileNotFoundError:
        mode = 0o666 & ~_UMASK
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        # Never leave half-written temp files behind, whatever interrupted us.
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(directory)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Writes ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``).

    Args:
        path: Destination file; its folder must exist.
        data: The complete new content.

    Raises:
        ValueError: If the destination folder does not exist.
    """
    _atomic_write(path, lambda handle: handle.write(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Writes ``text`` to ``path`` atomically; see :func:`atomic_write_bytes`."""
    atomic_write_bytes(path, text.encode(encoding))


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Writes ``obj`` as JSON (``indent=2``, ``sort_keys=True``, trailing newline) atomically.

    Args:
        path: Destination file.
        obj: Any ``json``-serialisable object.

    Raises:
        TypeError: If ``obj`` is not JSON-serialisable (nothing is written then).
    """
    # Serialise first so an unserialisable object cannot clobber an existing good file.
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    atomic_write_text(path, text)


def atomic_torch_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)``, but atomic: readers never see a partly written file."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def read_json(path: PathLike, what: str) -> Any:
    """Reads a JSON file, turning every failure into a one-line ``ValueError``.

    Args:
        path: The file to read.
        what: What the file is, for the message (e.g. ``"search state"``).

    Returns:
        The decoded object.

    Raises:
        ValueError: ``"<what> <path>: file not found"`` or ``"<what> <path>: not valid JSON
            (...)"``.
    """
    target = Path(path)
    try:
        raw = target.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{what} {target}: file not found") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {target}: is a folder, expected a JSON file") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{what} {target}: not valid JSON ({_one_line(exc)})") from None


def read_versioned_json(path: PathLike, what: str, fmt: str, version: int) -> dict[str, Any]:
    """Read a JSON object whose ``format`` must be ``fmt`` and ``format_version`` ``version``.

    Every versioned file the project writes (model records, anchor manifests) is checked this
    way, so a file of another kind or version fails with one line naming the field.
    """
    data = read_json(path, what)
    found = data.get("format") if isinstance(data, dict) else data
    if not isinstance(data, dict) or found != fmt:
        raise ValueError(f"{what} {path}: 'format' must be {fmt!r}, got {found!r}")
    if data.get("format_version") != version:
        raise ValueError(
            f"{what} {path}: 'format_version' {data.get('format_version')!r} is not supported "
            f"(this stitchnas reads version {version})"
        )
    return data


def file_sha256(path: PathLike) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks.

    Raises:
        ValueError: If the file does not exist.
    """
    target = Path(path)
    digest = hashlib.sha256()
    try:
        with target.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except FileNotFoundError:
        raise ValueError(f"file {target}: not found, cannot hash it") from None
    return digest.hexdigest()


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def save_checkpoint(path: PathLike, checkpoint: Mapping[str, Any]) -> None:
    """Saves a checkpoint dict atomically, for :func:`load_checkpoint`.

    The caller owns the layout; put a format version and the metadata needed to check a
    resume (architecture, recipe, epoch) in the dict itself, as plain values.

    Args:
        path: Destination ``.pt`` file.
        checkpoint: Tensors, state dicts and plain values (str, int, float, bool, None, lists,
            dicts); anything else could not be read back with ``weights_only=True``.

    Raises:
        TypeError: If ``checkpoint`` is not a mapping.
    """
    if not isinstance(checkpoint, Mapping):
        raise TypeError(f"save_checkpoint: checkpoint must be a mapping, got {type(checkpoint)}")
    atomic_torch_save(dict(checkpoint), path)


def load_checkpoint(path: PathLike) -> dict[str, Any]:
    """Loads a checkpoint dict on the CPU with ``torch.load(..., weights_only=True)``.

    ``weights_only`` means a checkpoint file cannot run code when it is loaded.

    Returns:
        The saved dict.

    Raises:
        ValueError: One line naming the file if it is missing, corrupt, not loadable with
            ``weights_only=True``, or does not hold a dict.
    """
    target = Path(path)
    if not target.is_file():
        raise ValueError(f"checkpoint {target}: file not found")
    try:
        payload = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files; all mean the same.
        raise ValueError(f"checkpoint {target}: cannot be loaded ({_one_line(exc)})") from None
    if not isinstance(payload, dict):
        raise ValueError(f"checkpoint {target}: expected a dict, got {type(payload).__name__}")
    return payload


def _parse_cell(text: str) -> Any:
    """CSV cell back to a value: "" -> None, then int, then float, else the string."""
    if text == "":
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def _format_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        # repr round-trips exactly; "nan"/"inf" parse back through float().
        # float() first: numpy 2 spells repr(np.float64(x)) as "np.float64(x)".
        return repr(float(value)) if math.isfinite(value) else str(float(value))
    return str(value)


class ResultsTable:
    """An append-only CSV table of candidate results, rewritten atomically on every append.

    Re-opening an existing file resumes it: its rows are read back and
    :meth:`done_keys` tells which candidates need not be evaluated again.

    Values are stored as text. :meth:`rows` parses each cell the same way whether the row was
    just appended or read from disk: empty -> ``None``, then ``int``, then ``float``, else
    ``str``. So a row reads back identically before and after a restart.

    Args:
        path: The CSV file; created (with only the header) if missing.
        columns: Column names, in order. Must match the header of an existing file.

    Raises:
        ValueError: If ``columns`` is empty or has duplicates, or the existing file's header
            differs from ``columns`` or a row has the wrong number of cells.
    """

    def __init__(self, path: PathLike, columns: Sequence[str]) -> None:
        self.path = Path(path)
        self.columns: tuple[str, ...] = tuple(str(c) for c in columns)
        if not self.columns:
            raise ValueError(f"results table {self.path}: columns must not be empty")
        if len(set(self.columns)) != len(self.columns):
            raise ValueError(f"results table {self.path}: duplicate column names in {columns}")
        self._rows: list[tuple[str, ...]] = []
        if self.path.exists():
            self._load()
        else:
            self._write()

    def _load(self) -> None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(
                f"results table {self.path}: cannot read ({_one_line(exc)})") from None
        records = list(csv.reader(io.StringIO(text, newline="")))
        if not records:
            raise ValueError(
                f"results table {self.path}: empty file, expected header {list(self.columns)}"
            )
        header = tuple(records[0])
        if header != self.columns:
            raise ValueError(
                f"results table {self.path}: header {list(header)} does not match the "
                f"expected columns {list(self.columns)}"
            )
        for line_no, record in enumerate(records[1:], start=2):
            if len(record) != len(self.columns):
                raise ValueError(
                    f"results table {self.path}: line {line_no} has {len(record)} cells, "
                    f"expected {len(self.columns)}"
                )
            self._rows.append(tuple(record))

    def _write(self) -> None:
        buffer = io.StringIO(newline="")
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(self.columns)
        writer.writerows(self._rows)
        atomic_write_text(self.path, buffer.getvalue())

    def append(self, row: Mapping[str, Any]) -> None:
        """Adds one row and rewrites the file atomically.

        Args:
            row: One value per column (``None`` for a missing value); no other keys.

        Raises:
            ValueError: If ``row`` lacks a column or has an unknown key.
        """
        missing = [c for c in self.columns if c not in row]
        unknown = [k for k in row if k not in self.columns]
        if missing or unknown:
            raise ValueError(
                f"results table {self.path}: row missing columns {missing} / unknown keys "
                f"{unknown}; expected exactly {list(self.columns)}"
            )
        self._rows.append(tuple(_format_cell(row[c]) for c in self.columns))
        try:
            self._write()
        except BaseException:
            self._rows.pop()  # keep memory and disk in agreement
            raise

    def extend(self, rows: Iterable[Mapping[str, Any]]) -> None:
        """Appends several rows, one atomic rewrite each."""
        for row in rows:
            self.append(row)

    def rows(self) -> list[dict[str, Any]]:
        """All rows, oldest first, with cells parsed as described in the class docstring."""
        return [{c: _parse_cell(cell) for c, cell in zip(self.columns, record)}
                for record in self._rows]

    def done_keys(self, key_column: str) -> set[str]:
        """The raw text of ``key_column`` over all rows (compare against ``str(key)``).

        Raises:
            ValueError: If ``key_column`` is not a column.
        """
        if key_column not in self.columns:
            raise ValueError(
                f"results table {self.path}: key_column {key_column!r} is not one of "
                f"{list(self.columns)}"
            )
        position = self.columns.index(key_column)
        return {record[position] for record in self._rows}

    def __len__(self) -> int:
        return len(self._rows)
