"""``autopaint validate``: header-first validation of NIfTI inputs, printed as a JSON report."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import typer


def _validate(ct: Path | None, pet: Path | None, mask: Path | None, max_voxels: int | None) -> dict[str, Any]:
    from autopaint.imaging.validate import Role, ValidationLimits, inspect_nifti, inspect_pair

    limits = ValidationLimits() if max_voxels is None else ValidationLimits(max_voxels=max_voxels)
    given: tuple[tuple[Role, Path | None], ...] = (("ct", ct), ("pet", pet), ("mask", mask))
    reports = {role: inspect_nifti(p, role, limits) for role, p in given if p is not None}
    pair = None
    if ct is not None and pet is not None:
        pair = inspect_pair(ct, pet, limits, ct_report=reports["ct"], pet_report=reports["pet"]).to_dict()
        pair = {k: pair[k] for k in ("ok", "code", "message", "overlap")}
    ok = all(r.ok for r in reports.values()) and (pair is None or bool(pair["ok"]))
    return {"ok": ok, "files": [r.to_dict() for r in reports.values()], "pair": pair}


def register(app: typer.Typer) -> None:
    """Attach ``autopaint validate`` to the main app."""

    @app.command("validate")
    def validate(
        ct: Path | None = typer.Option(None, "--ct", help="CT NIfTI (HU)."),
        pet: Path | None = typer.Option(None, "--pet", help="PET NIfTI (SUV)."),
        mask: Path | None = typer.Option(None, "--mask", help="Mask / label NIfTI (integer labels)."),
        max_voxels: int | None = typer.Option(None, "--max-voxels", help="Voxel cap per file."),
    ) -> None:
        """Check NIfTI inputs header-first (then voxels, bounded memory); print a JSON report.

        Exit code 0 when every file (and the CT/PET pair) is valid, 2 otherwise.
        """
        if ct is None and pet is None and mask is None:
            raise typer.BadParameter("give at least one of --ct, --pet, --mask")
        result = _validate(ct, pet, mask, max_voxels)
        print(json.dumps(result, indent=2))
        if not result["ok"]:
            first = next((f for f in result["files"] if not f["ok"]), None) or result["pair"]
            print(f"autopaint: invalid input [{first['code']}]: {first['message']}", file=sys.stderr)
            raise typer.Exit(code=2)
