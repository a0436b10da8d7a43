"""telemetry: series dictionary, raw points (partitioned by ts on PostgreSQL), latest values,
1-minute and 1-hour rollups, retention per enterprise

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import ecoplat.db

revision: str = '0002'
down_revision: str | Sequence[str] | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _rollup(name: str) -> None:
    op.create_table(name,
    sa.Column('series_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('bucket_ts', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('sum', sa.Float(), nullable=False),
    sa.Column('min', sa.Float(), nullable=False),
    sa.Column('max', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('series_id', 'bucket_ts', name=op.f(f'pk_{name}')),
    sqlite_with_rowid=False,
    )


def upgrade() -> None:
    op.create_table('telemetry_series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('key', sa.String(length=255), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_telemetry_series')),
    sa.UniqueConstraint('device_id', 'key', name=op.f('uq_telemetry_series_device_id_key')),
    )
    with op.batch_alter_table('telemetry_series', schema=None) as batch_op:
        batch_op.create_index('ix_telemetry_series_enterprise_id', ['enterprise_id'], unique=False)

    # Partitions of telemetry_raw (PostgreSQL) are created by the store as data arrives.
    op.create_table('telemetry_raw',
    sa.Column('series_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('ts', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('v_num', sa.Float(), nullable=True),
    sa.Column('v_str', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('series_id', 'ts', name=op.f('pk_telemetry_raw')),
    sqlite_with_rowid=False,
    postgresql_partition_by='RANGE (ts)',
    )
    op.create_table('telemetry_latest',
    sa.Column('series_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('ts', sa.BigInteger(), nullable=False),
    sa.Column('v_num', sa.Float(), nullable=True),
    sa.Column('v_str', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('series_id', name=op.f('pk_telemetry_latest')),
    sqlite_with_rowid=False,
    )
    _rollup('telemetry_agg_1m')
    _rollup('telemetry_agg_1h')
    op.create_table('telemetry_retention',
    sa.Column('enterprise_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('days', sa.Integer(), nullable=False),
    sa.Column('updated_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_telemetry_retention_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('enterprise_id', name=op.f('pk_telemetry_retention')),
    )


def downgrade() -> None:
    op.drop_table('telemetry_retention')
    op.drop_table('telemetry_agg_1h')
    op.drop_table('telemetry_agg_1m')
    op.drop_table('telemetry_latest')
    # Dropping the partitioned parent drops its partitions with it.
    op.drop_table('telemetry_raw')
    with op.batch_alter_table('telemetry_series', schema=None) as batch_op:
        batch_op.drop_index('ix_telemetry_series_enterprise_id')
    op.drop_table('telemetry_series')
