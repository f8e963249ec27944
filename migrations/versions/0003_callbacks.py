"""callbacks: the outbox table, callback URLs on jobs and cohorts, a signing secret per API key

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-10 10:00:00

- ``callback_deliveries``: the callback outbox (``autopaint.db.callbacks``).
- ``jobs.callback_url``, ``cohorts.callback_url`` and ``cohorts.expected_jobs``.
- ``api_keys.callback_secret`` (64 hex characters, NOT NULL): every existing key gets a fresh random
  secret here; ``callback_secret_previous`` / ``callback_secret_rotated_at`` for rotations.

Columns are added and dropped with plain ``ALTER TABLE`` (SQLite >= 3.35 drops a plain column in
place): re-creating ``jobs`` on SQLite would cascade-delete its artifacts. Only ``api_keys``, which
nothing references, is re-created (SQLite) to make the back-filled secret NOT NULL.
"""

from __future__ import annotations

import secrets

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

_keys = sa.table("api_keys", sa.column("id", sa.String), sa.column("callback_secret", sa.String))


def _backfill_secrets() -> None:
    conn = op.get_bind()
    for (key_id,) in conn.execute(sa.select(_keys.c.id)).all():
        conn.execute(sa.update(_keys).where(_keys.c.id == key_id).values(callback_secret=secrets.token_hex(32)))


def upgrade() -> None:
    op.add_column('api_keys', sa.Column('callback_secret', sa.String(length=64), nullable=True))
    op.add_column('api_keys', sa.Column('callback_secret_previous', sa.String(length=64), nullable=True))
    op.add_column('api_keys', sa.Column('callback_secret_rotated_at', sa.DateTime(), nullable=True))
    _backfill_secrets()
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.alter_column('callback_secret', existing_type=sa.String(length=64), nullable=False)
    op.add_column('jobs', sa.Column('callback_url', sa.String(length=2048), nullable=True))
    op.add_column('cohorts', sa.Column('callback_url', sa.String(length=2048), nullable=True))
    op.add_column('cohorts', sa.Column('expected_jobs', sa.Integer(), nullable=True))
    op.create_table('callback_deliveries',
    sa.Column('id', sa.String(length=32), nullable=False),
    sa.Column('owner_key_id', sa.String(length=32), nullable=False),
    sa.Column('job_id', sa.String(length=32), nullable=True),
    sa.Column('cohort_id', sa.String(length=32), nullable=True),
    sa.Column('event', sa.String(length=32), nullable=False),
    sa.Column('url', sa.String(length=2048), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('last_attempt_at', sa.DateTime(), nullable=True),
    sa.Column('history', sa.JSON(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(), nullable=True),
    sa.Column('claimed_by', sa.String(length=32), nullable=True),
    sa.Column('delivered_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['cohort_id'], ['cohorts.id'], name=op.f('fk_callback_deliveries_cohort_id_cohorts'),
                            ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], name=op.f('fk_callback_deliveries_job_id_jobs'),
                            ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_callback_deliveries')),
    sa.UniqueConstraint('cohort_id', 'event', name='uq_callback_deliveries_cohort_event'),
    sa.UniqueConstraint('job_id', 'event', name='uq_callback_deliveries_job_event')
    )
    op.create_index('ix_callback_deliveries_due', 'callback_deliveries', ['next_attempt_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_callback_deliveries_due', table_name='callback_deliveries')
    op.drop_table('callback_deliveries')
    op.drop_column('cohorts', 'expected_jobs')
    op.drop_column('cohorts', 'callback_url')
    op.drop_column('jobs', 'callback_url')
    op.drop_column('api_keys', 'callback_secret_rotated_at')
    op.drop_column('api_keys', 'callback_secret_previous')
    op.drop_column('api_keys', 'callback_secret')
