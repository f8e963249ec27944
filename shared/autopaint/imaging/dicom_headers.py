"""What the headers of a DICOM image series say (pydicom, no pixel data): which image series a folder
holds, the slices of the one chosen and their geometry check (the stack's LPS+ affine), and a PET's SUV
inputs. :func:`autopaint.imaging.io.read_dicom_series` reads the pixels and converts the affine to RAS+.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from autopaint.errors import InvalidInput
from autopaint.imaging.suv import injection_time, scan_reference_time

Slices = list[tuple[Path, Dataset]]


# Objects that share folders with image series but are not slices: skipped when scanning.
_NON_IMAGE_MODALITIES = {"RTSTRUCT", "RTPLAN", "RTDOSE", "RTRECORD", "SEG", "SR", "PR", "KO", "REG", "DOC"}
SUV_KEYS = ("weight_kg", "injected_dose_bq", "delay_s", "half_life_s", "units")
SLICE_SPACING_TOLERANCE = 0.01  # largest relative deviation of one slice step from the median step
_SLICE_HEADER = ("Rows", "Columns", "ImagePositionPatient", "ImageOrientationPatient")


def _parse_dicom_datetime(date: str | None, time: str | None) -> datetime.datetime | None:
    """DICOM DA ``YYYYMMDD`` + TM ``HHMMSS[.ffffff]`` (or a DT in ``time`` when ``date`` is None)."""
    if not time:
        return None
    text = time.strip().split("+")[0].split("-")[0]
    if date is None and len(text) >= 14:  # DT: YYYYMMDDHHMMSS.ffffff
        date, text = text[:8], text[8:]
    if not date or len(date.strip()) != 8:
        return None
    hhmmss, _, frac = text.partition(".")
    hhmmss = hhmmss.ljust(6, "0")
    try:
        base = datetime.datetime.strptime(date.strip() + hhmmss[:6], "%Y%m%d%H%M%S")
    except ValueError:
        return None
    micro = int((frac + "000000")[:6]) if frac.isdigit() else 0
    return base + datetime.timedelta(microseconds=micro)


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword) if ds is not None else None
    return "" if value is None else str(value).strip()


def _positive(value: object) -> float | None:
    try:
        out = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return out if np.isfinite(out) and out > 0 else None


def _private(ds: Dataset, group: int, offset: int, creator: str) -> str:
    """A private element's value as text (by its creator; the bare (gggg,10xx) tag when no creator)."""
    elem: Any
    try:
        elem = ds.get_private_item(group, offset, creator)
    except KeyError:
        elem = ds.get((group, 0x1000 + offset)) if (group, 0x0010) not in ds else None
    value = None if elem is None else elem.value
    if isinstance(value, bytes):
        value = value.decode("ascii", "ignore").strip("\0 ")
    return "" if value is None else str(value).strip()


def _datetime(ds: Dataset, prefix: str) -> datetime.datetime | None:
    if _text(ds, prefix + "DateTime"):
        return _parse_dicom_datetime(None, _text(ds, prefix + "DateTime"))
    return _parse_dicom_datetime(_text(ds, prefix + "Date"), _text(ds, prefix + "Time"))


def _suv_tags(slices: list[Dataset]) -> dict[str, Any]:
    """SUV inputs of a series (see :func:`pet_suv_tags`); the scan time needs every slice."""
    first = slices[0]
    seq = first.get("RadiopharmaceuticalInformationSequence")
    rp = seq[0] if seq else None
    ref, ref_name = scan_reference_time(
        _datetime(first, "Series"), [t for ds in slices if (t := _datetime(ds, "Acquisition")) is not None],
        _parse_dicom_datetime(None, _private(first, 0x0009, 0x0D, "GEMS_PETD_01")))
    day = _text(first, "SeriesDate") or (ref.strftime("%Y%m%d") if ref else "")
    inj, note = injection_time(_parse_dicom_datetime(None, _text(rp, "RadiopharmaceuticalStartDateTime")),
                               _parse_dicom_datetime(day, _text(rp, "RadiopharmaceuticalStartTime")), ref)
    corrected = first.get("CorrectedImage")
    out: dict[str, Any] = {
        "origin": "dicom", "modality": _text(first, "Modality") or None, "units": _text(first, "Units") or None,
        "decay_correction": _text(first, "DecayCorrection") or None, "suv_type": _text(first, "SUVType") or None,
        "corrected_image": [str(v) for v in ([corrected] if isinstance(corrected, str) else corrected or [])],
        "weight_kg": _positive(first.get("PatientWeight")),
        "injected_dose_bq": _positive(rp.get("RadionuclideTotalDose") if rp else None),
        "half_life_s": _positive(rp.get("RadionuclideHalfLife") if rp else None),
        "injection_time": inj.isoformat() if inj else None, "reference_time": ref.isoformat() if ref else None,
        "delay_reference": ref_name, "delay_s": (ref - inj).total_seconds() if ref and inj else None,
        "philips_suv_scale": _positive(_private(first, 0x7053, 0x00, "Philips PET Private Group")),
        "philips_activity_scale": _positive(_private(first, 0x7053, 0x09, "Philips PET Private Group")),
        "suv_notes": [note] if note else [],
    }
    out["missing"] = [k for k in SUV_KEYS if out[k] is None]
    return out


def pet_suv_tags(first_file: str | Path) -> dict[str, Any]:
    """PET SUV inputs of one DICOM file (``read_dicom_series`` uses every slice of the series).

    Keys (``None`` when absent; ``missing`` lists those of ``SUV_KEYS``): ``origin`` (``"dicom"``),
    ``modality``, ``units`` (0054,1001), ``decay_correction`` (0054,1102), ``suv_type`` (0054,1006),
    ``corrected_image`` (0028,0051), ``weight_kg`` (PatientWeight 0010,1030), ``injected_dose_bq``
    (0018,1074), ``half_life_s`` (0018,1075), ``injection_time`` and ``reference_time`` (ISO 8601),
    ``delay_reference`` (``series``, ``acquisition`` or ``ge-private``), ``delay_s``,
    ``philips_suv_scale`` (7053,1000), ``philips_activity_scale`` (7053,1009), ``suv_notes``. The
    rules (QIBA scan time, injection time, midnight) are those of :mod:`autopaint.imaging.suv`.
    """
    try:
        ds = pydicom.dcmread(str(first_file), stop_before_pixels=True)
    except Exception as exc:  # pydicom raises many types on garbage
        raise InvalidInput("not a readable DICOM file", code="not_dicom") from exc
    return _suv_tags([ds])


def _read_slice_header(path: Path) -> Dataset | None:
    """Header (no pixel data) of an image slice; None for non-DICOM files and non-image objects."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except Exception:  # not DICOM, truncated...: not part of any series
        return None
    if _text(ds, "Modality").upper() in _NON_IMAGE_MODALITIES or any(k not in ds for k in _SLICE_HEADER):
        return None
    return ds


def _scan(directory: Path) -> dict[str, list[tuple[Path, Dataset]]]:
    """Image slices under ``directory`` (recursively, hidden names skipped) by SeriesInstanceUID."""
    found: dict[str, list[tuple[Path, Dataset]]] = {}
    for root, dirs, names in os.walk(directory):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(n for n in names if not n.startswith(".")):
            ds = _read_slice_header(Path(root) / name)
            if ds is not None:
                found.setdefault(_text(ds, "SeriesInstanceUID") or "unknown", []).append((Path(root) / name, ds))
    return found


def _describe(found: dict[str, list[tuple[Path, Dataset]]]) -> list[dict[str, Any]]:
    return [{"series_instance_uid": uid, "modality": _text(items[0][1], "Modality") or None,
             "n_files": len(items), "description": _text(items[0][1], "SeriesDescription") or None}
            for uid, items in found.items()]


def list_dicom_series(directory: str | Path) -> list[dict[str, Any]]:
    """The image series under ``directory``: ``series_instance_uid``, ``modality``, ``n_files``,
    ``description`` (non-DICOM files and non-image objects such as RTSTRUCT or SEG are skipped)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidInput(f"DICOM series folder not found: {directory.name!r}", code="not_dicom")
    return _describe(_scan(directory))


def _geometry_error(message: str) -> InvalidInput:
    return InvalidInput(message, code="dicom_geometry")


def stack_slices(items: Slices) -> tuple[Slices, np.ndarray]:
    """Sort the slices along their normal, check that they form a regular grid (else
    ``dicom_geometry``), return them in slice order with the stack's LPS+ affine (DICOM patient
    coordinates, mm; :mod:`autopaint.imaging.io` turns it into RAS+)."""
    dss = [ds for _, ds in items]
    sizes = sorted({(int(ds.Rows), int(ds.Columns)) for ds in dss})
    if len(sizes) > 1:
        raise _geometry_error(f"slices have different sizes (rows x columns): {sizes}")
    if any(int(ds.get("NumberOfFrames") or 1) > 1 for ds in dss):
        raise _geometry_error("multi-frame DICOM images are not supported")
    try:
        iop = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in dss]).reshape(len(dss), 6)
        ipp = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in dss]).reshape(len(dss), 3)
        ps = np.array([[float(v) for v in ds.PixelSpacing] for ds in dss]).reshape(len(dss), 2)
    except (AttributeError, TypeError, ValueError) as exc:
        raise _geometry_error("ImagePositionPatient, ImageOrientationPatient or PixelSpacing missing or "
                              "malformed") from exc
    if np.abs(iop - iop[0]).max() > 1e-4:
        raise _geometry_error("slices have different orientations (ImageOrientationPatient)")
    if np.abs(ps - ps[0]).max() > 1e-4 * ps[0].max() or ps.min() <= 0:
        raise _geometry_error("slices have different or non-positive PixelSpacing")
    row, col = iop[0, :3], iop[0, 3:]
    if max(abs(np.linalg.norm(row) - 1), abs(np.linalg.norm(col) - 1), abs(row @ col)) > 1e-3:
        raise _geometry_error("ImageOrientationPatient is not two orthogonal unit vectors")
    normal = np.cross(row, col)
    order = np.argsort(ipp @ normal, kind="stable")
    ipp = ipp[order]
    pos = ipp @ normal
    step = _positive(dss[0].get("SpacingBetweenSlices")) or _positive(dss[0].get("SliceThickness")) or 1.0
    if len(pos) > 1:
        d = np.diff(pos)
        if d.min() < 1e-3:
            raise _geometry_error(f"{int((d < 1e-3).sum()) + 1} slices share a position along the slice normal "
                                  "(dynamic, multi-phase or duplicated series?)")
        step = float(np.median(d))
        dev = np.abs(d - step) / step
        k = int(np.argmax(dev))
        if dev[k] > SLICE_SPACING_TOLERANCE:
            gap = d[k] / step - 1
            if round(gap) >= 1 and abs(gap - round(gap)) < 0.1:
                raise _geometry_error(f"missing slice(s): a gap of {d[k]:.4g} mm between slices at {pos[k]:.2f} and "
                                      f"{pos[k + 1]:.2f} mm where the spacing is {step:.4g} mm "
                                      f"(about {round(gap)} missing)")
            raise _geometry_error(f"uneven slice spacing: steps from {d.min():.4g} to {d.max():.4g} mm, more than "
                                  f"{SLICE_SPACING_TOLERANCE:.0%} from the median {step:.4g} mm")
        drift = np.linalg.norm((ipp - ipp[0]) - np.outer(pos - pos[0], normal), axis=1).max()
        if drift > 0.5 * ps[0].min():
            raise _geometry_error(f"slice positions drift {drift:.3g} mm in-plane along the stack (gantry tilt?)")
    lps = np.column_stack([row * ps[0, 1], col * ps[0, 0], normal * step])
    affine = np.eye(4)
    affine[:3, :3], affine[:3, 3] = lps, ipp[0]
    return [items[i] for i in order], affine


def find_series(directory: str | Path, series_uid: str | None = None) -> tuple[str, Slices, int]:
    """The image slices of one series under ``directory`` (searched recursively; the same instance
    twice counts once): (its SeriesInstanceUID, [(path, header)], how many series the folder holds).
    See :func:`autopaint.imaging.io.read_dicom_series` for the errors."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InvalidInput(f"DICOM series folder not found: {directory.name!r}", code="not_dicom")
    found = _scan(directory)
    listing = "; ".join(f"{s['series_instance_uid']} ({s['modality']}, {s['n_files']} files)" for s in _describe(found))
    if not found:
        raise InvalidInput("no DICOM image series found in the folder", code="not_dicom")
    if series_uid is None and len(found) > 1:
        raise InvalidInput(f"the folder holds {len(found)} DICOM series, choose one by SeriesInstanceUID: "
                           f"{listing}", code="multiple_series")
    uid = series_uid if series_uid is not None else next(iter(found))
    if uid not in found:
        raise InvalidInput(f"DICOM series {uid!r} not found; the folder holds: {listing}", code="series_not_found")
    unique: dict[str, tuple[Path, Dataset]] = {}
    for path, ds in found[uid]:  # the same instance twice (a copied file) counts once
        unique.setdefault(_text(ds, "SOPInstanceUID") or str(path), (path, ds))
    return uid, list(unique.values()), len(found)


def series_tags(items: Slices, uid: str, n_series: int) -> dict[str, Any]:
    """The tags dict of :func:`autopaint.imaging.io.read_dicom_series` for the slices ``items`` (in
    slice order) of series ``uid``, one of ``n_series`` in its folder."""
    tags = _suv_tags([ds for _, ds in items])
    first = items[0][1]
    tags.update(series_instance_uid=uid, study_instance_uid=_text(first, "StudyInstanceUID") or None,
                frame_of_reference_uid=_text(first, "FrameOfReferenceUID") or None,
                series_description=_text(first, "SeriesDescription") or None, files=[str(p) for p, _ in items],
                n_files=len(items), n_series_in_folder=n_series)
    return tags

