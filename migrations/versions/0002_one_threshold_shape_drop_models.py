"""one shape for manifest.threshold; drop the unused models table

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06 09:30:00

- ``jobs.manifest["threshold"]`` was a float after a run and a dict after a re-threshold; it is now
  always ``{"value": float, "source": str, "previous"?: float | null}``
  (``autopaint.contracts.ThresholdRecord``). Rows written before keep their value, source ``run``.
- The ``models`` table was never written or read.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None

_jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("manifest", sa.JSON))


def _rewrite(convert) -> None:  # type: ignore[no-untyped-def]
    conn = op.get_bind()
    rows = conn.execute(sa.select(_jobs.c.id, _jobs.c.manifest).where(_jobs.c.manifest.is_not(None))).all()
    for job_id, manifest in rows:
        if not isinstance(manifest, dict) or "threshold" not in manifest:
            continue
        new = convert(manifest["threshold"])
        if new is not manifest["threshold"]:
            conn.execute(sa.update(_jobs).where(_jobs.c.id == job_id).values(manifest={**manifest, "threshold": new}))


def upgrade() -> None:
    _rewrite(lambda t: {"value": float(t), "source": "run"} if isinstance(t, int | float) else t)
    op.drop_table('models')


def downgrade() -> None:
    op.create_table('models',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=True),
    sa.Column('size', sa.Integer(), nullable=True),
    sa.Column('card', sa.JSON(), nullable=False),
    sa.Column('registered_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_models'))
    )
    _rewrite(lambda t: t.get("value") if isinstance(t, dict) and t.get("source") == "run" else t)
