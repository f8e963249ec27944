"""Unpacking a DICOM series uploaded as a .zip archive, which is untrusted.

:func:`extract_series_zip` refuses, before writing anything:

* member names that are absolute (``/x``, ``C:x``), climb out (``..``), hold a NUL, are nested
  deeper than ``MAX_DEPTH`` or appear twice; symbolic links and other non-regular members;
  encrypted members; archives that are not zip files (``bad_zip``);
* more file members than ``max_members`` (the central directory's entry count is read from the
  end record before :mod:`zipfile` parses it, so a huge directory is not loaded), a declared
  uncompressed total above ``max_total_bytes``, or a member over 1 MiB whose declared size is more
  than ``max_ratio`` times its compressed size (``zip_too_large``). Real DICOM deflates 1-2x
  (measured on the IBSI and TotalSegmentator series); a zip bomb ~1000x.

Members are then streamed in 1 MiB chunks (never a whole member in memory), the bytes actually
written are counted against ``max_total_bytes`` again, and CRCs are checked by :mod:`zipfile`.
Everything goes to a temporary folder under ``dest_dir`` that is renamed to ``dest_dir / name``
only when complete and removed on any error, so nothing half-written is left. macOS ``__MACOSX/``
metadata and folder entries are skipped; file modes and times from the archive are not applied.
"""

from __future__ import annotations

import os
import shutil
import stat
import struct
import tempfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath

from autopaint.errors import InvalidInput

DEFAULT_MAX_TOTAL_BYTES = 2 * 1024**3
DEFAULT_MAX_MEMBERS = 5000
DEFAULT_MAX_RATIO = 100.0
RATIO_MIN_BYTES = 1 << 20  # members smaller than this cannot make a bomb: no ratio check
MAX_DEPTH = 16
CHUNK = 1 << 20
_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_EOCD, _ZIP64_LOCATOR, _ZIP64_EOCD = b"PK\x05\x06", b"PK\x06\x07", b"PK\x06\x06"


def _bad(message: str) -> InvalidInput:
    return InvalidInput(message, code="bad_zip")


def _too_large(message: str) -> InvalidInput:
    return InvalidInput(message, code="zip_too_large")


def is_zip(path: str | Path) -> bool:
    """True when ``path`` is a file that starts like a zip archive and has a zip end record."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
    except OSError:
        return False
    return head in _MAGIC and zipfile.is_zipfile(path)


def _declared_entries(path: Path) -> int:
    """Entry count from the end-of-central-directory record (zip64 aware), read before parsing."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        start = max(0, size - (22 + 0xFFFF))
        fh.seek(start)
        tail = fh.read()
        at = tail.rfind(_EOCD)
        if at < 0 or at + 22 > len(tail):
            raise _bad("not a zip archive (no end of central directory)")
        total = struct.unpack_from("<H", tail, at + 10)[0]
        loc = at - 20
        if total == 0xFFFF and loc >= 0 and tail[loc:loc + 4] == _ZIP64_LOCATOR:
            fh.seek(struct.unpack_from("<Q", tail, loc + 8)[0])
            record = fh.read(56)
            if len(record) < 40 or record[:4] != _ZIP64_EOCD:
                raise _bad("corrupt zip64 end of central directory")
            total = struct.unpack_from("<Q", record, 32)[0]
    return int(total)


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The safe relative path of a member; None for entries that are skipped."""
    name = info.filename.replace("\\", "/")
    if "\0" in name:
        raise _bad("member name holds a NUL character")
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise _bad(f"absolute member name {name[:80]!r}")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise _bad(f"member name leaves the folder: {name[:80]!r}")
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise _bad(f"symbolic link member {name[:80]!r}")
    if info.is_dir() or not parts or parts[0] == "__MACOSX":
        return None
    if stat.S_IFMT(mode) and not stat.S_ISREG(mode):
        raise _bad(f"member {name[:80]!r} is not a regular file")
    if len(parts) > MAX_DEPTH:
        raise _bad(f"member {name[:80]!r} is nested deeper than {MAX_DEPTH} folders")
    if info.flag_bits & 0x1:
        raise _bad(f"member {name[:80]!r} is encrypted")
    return PurePosixPath(*parts)


def _plan(zf: zipfile.ZipFile, max_total_bytes: int, max_members: int,
          max_ratio: float) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    plan: list[tuple[zipfile.ZipInfo, PurePosixPath]] = []
    seen: set[str] = set()
    total = 0
    for info in zf.infolist():
        rel = _member_path(info)
        if rel is None:
            continue
        if str(rel).casefold() in seen:
            raise _bad(f"member {str(rel)[:80]!r} appears twice")
        seen.add(str(rel).casefold())
        total += info.file_size
        if len(plan) >= max_members:
            raise _too_large(f"the archive holds more than {max_members} files")
        if total > max_total_bytes:
            raise _too_large(f"the archive unpacks to more than {max_total_bytes} bytes")
        if info.file_size > RATIO_MIN_BYTES and info.file_size > max_ratio * max(info.compress_size, 1):
            raise _too_large(f"member {str(rel)[:80]!r} is compressed {info.file_size / max(info.compress_size, 1):.0f}"
                             f"x (limit {max_ratio:g}x): a zip bomb?")
        plan.append((info, rel))
    if not plan:
        raise _bad("the archive holds no files")
    return plan


def extract_series_zip(zip_path: str | Path, dest_dir: str | Path,
                       max_total_bytes: int = DEFAULT_MAX_TOTAL_BYTES, max_members: int = DEFAULT_MAX_MEMBERS,
                       *, max_ratio: float = DEFAULT_MAX_RATIO, name: str = "dicom") -> Path:
    """Unpack an untrusted zip into ``dest_dir / name`` (which must not exist) and return that path.

    Errors: ``InvalidInput`` with code ``bad_zip`` or ``zip_too_large`` (see the module doc); on any
    error nothing is left under ``dest_dir``. Pass the result to ``io.read_dicom_series``.
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    target = dest_dir / name
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    if not is_zip(zip_path):
        raise _bad("not a zip archive")
    entries = _declared_entries(zip_path)
    if entries > 2 * max_members + 100:  # folders are entries too
        raise _too_large(f"the archive declares {entries} entries, limit {max_members} files")
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError) as exc:
        raise _bad(f"unreadable zip archive ({type(exc).__name__})") from exc
    with zf:
        plan = _plan(zf, max_total_bytes, max_members, max_ratio)
        dest_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".unzip-", dir=dest_dir))
        try:
            written = 0
            for info, rel in plan:
                out = tmp.joinpath(*rel.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "xb") as dst:
                    while chunk := src.read(CHUNK):
                        written += len(chunk)
                        if written > max_total_bytes:
                            raise _too_large(f"the archive unpacks to more than {max_total_bytes} bytes")
                        dst.write(chunk)
            os.rename(tmp, target)
        except InvalidInput:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, OSError) as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise _bad(f"could not unpack the archive ({type(exc).__name__})") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return target
