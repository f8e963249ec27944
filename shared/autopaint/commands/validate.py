"""``autopaint validate``: check inputs before a run (NIfTI header first, DICOM series geometry, the
PET's units by the same rule as ``segment``), printed as a JSON report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer

from autopaint.commands import segment as opts


def _dicom_report(role: str, folder: Path, series_uid: str | None) -> tuple[dict[str, Any], Any, Any]:
    """(report, volume, tags) of a DICOM series folder; a refused series gives ok false and its code."""
    from autopaint.errors import InvalidInput
    from autopaint.imaging.io import read_dicom_series

    rep: dict[str, Any] = {"path": str(folder), "role": role, "format": "dicom", "ok": False, "code": None,
                           "message": None}
    try:
        vol, tags = read_dicom_series(folder, series_uid)
    except InvalidInput as exc:
        rep.update(code=exc.code, message=str(exc))
        return rep, None, None
    rep.update(ok=True, shape=list(vol.shape), spacing=[float(s) for s in vol.spacing],
               modality=tags.get("modality"), series_instance_uid=tags.get("series_instance_uid"),
               n_files=len(tags.get("files") or []))
    return rep, vol, tags


def _units_report(pet: Path, vol: Any, tags: Any, suv: Any) -> dict[str, Any]:
    """The PET's units by the one rule (:func:`autopaint.imaging.suv.pet_in_suv`)."""
    from autopaint.errors import InvalidInput
    from autopaint.imaging.io import read_volume
    from autopaint.imaging.suv import pet_in_suv

    try:
        suv_vol = pet_in_suv(vol if vol is not None else read_volume(pet), tags, suv.suv_tags(), suv.suv_already,
                             suv.check_units)
    except InvalidInput as exc:
        return {"ok": False, "code": exc.code, "message": str(exc)}
    return {"ok": True, "code": None, "message": None, "calibration": suv_vol.meta.get("suv_calibration")}


def _validate(ct: Path | None, pet: Path | None, mask: Path | None, max_voxels: int | None,
              suv: Any, series_uids: dict[str, str]) -> dict[str, Any]:
    from autopaint.imaging.validate import Role, ValidationLimits, inspect_nifti, inspect_pair

    limits = ValidationLimits() if max_voxels is None else ValidationLimits(max_voxels=max_voxels)
    given: tuple[tuple[Role, Path | None], ...] = (("ct", ct), ("pet", pet), ("mask", mask))
    files: dict[str, dict[str, Any]] = {}
    nifti: dict[str, Any] = {}
    dicom: dict[str, tuple[Any, Any]] = {}
    for role, p in given:
        if p is None:
            continue
        if p.is_dir() and role in ("ct", "pet"):
            files[role], *loaded = _dicom_report(role, p, series_uids.get(role))
            dicom[role] = (loaded[0], loaded[1])
        else:
            nifti[role] = inspect_nifti(p, role, limits)
            files[role] = {"format": "nifti", **nifti[role].to_dict()}
    pair = None
    if "ct" in nifti and "pet" in nifti:
        pair = inspect_pair(ct, pet, limits, ct_report=nifti["ct"], pet_report=nifti["pet"]).to_dict()  # type: ignore[arg-type]
        pair = {k: pair[k] for k in ("ok", "code", "message", "overlap")}
    units = None
    if pet is not None and files["pet"]["ok"]:
        vol, tags = dicom.get("pet", (None, None))
        units = _units_report(pet, vol, tags, suv)
    ok = all(f["ok"] for f in files.values()) and (pair is None or bool(pair["ok"])) and (units is None or units["ok"])
    return {"ok": ok, "files": list(files.values()), "pair": pair, "pet_units": units}


def register(app: typer.Typer) -> None:
    """Attach ``autopaint validate`` to the main app."""

    @app.command("validate")
    def validate(
        ct: Path | None = opts.CT_OPTION,
        pet: Path | None = opts.PET_OPTION,
        mask: Path | None = typer.Option(None, "--mask", help="Mask / label NIfTI (integer labels)."),
        ct_series_uid: str = opts.CT_SERIES_OPTION,
        pet_series_uid: str = opts.PET_SERIES_OPTION,
        suv_already: bool = opts.SUV_ALREADY_OPTION,
        weight_kg: float = opts.WEIGHT_OPTION,
        injected_dose_bq: float = opts.DOSE_OPTION,
        delay_s: float = opts.DELAY_OPTION,
        half_life_s: float = opts.HALF_LIFE_OPTION,
        allow_implausible_units: bool = opts.IMPLAUSIBLE_OPTION,
        max_voxels: int | None = typer.Option(None, "--max-voxels", help="Voxel cap per file."),
    ) -> None:
        """Check inputs: NIfTI header first (then voxels, bounded memory), DICOM series geometry, the
        CT/PET overlap and the PET's units (the same rule as ``segment``); print a JSON report.

        Exit code 0 when every check passes, 2 otherwise.
        """
        from autopaint.errors import InvalidInput

        if ct is None and pet is None and mask is None:
            raise typer.BadParameter("give at least one of --ct, --pet, --mask")
        try:
            suv = opts.suv_inputs(None, suv_already, weight_kg, injected_dose_bq, delay_s, half_life_s,
                             check_units=not allow_implausible_units)
        except InvalidInput as exc:
            print(f"autopaint: invalid input [{exc.code}]: {exc}", file=sys.stderr)
            raise typer.Exit(code=2) from exc
        uids = {r: u for r, u in (("ct", ct_series_uid), ("pet", pet_series_uid)) if u}
        result = _validate(ct, pet, mask, max_voxels, suv, uids)
        print(json.dumps(result, indent=2))
        if not result["ok"]:
            first = (next((f for f in result["files"] if not f["ok"]), None) or
                     (result["pair"] if result["pair"] and not result["pair"]["ok"] else None) or result["pet_units"])
            print(f"autopaint: invalid input [{first['code']}]: {first['message']}", file=sys.stderr)
            raise typer.Exit(code=2)
