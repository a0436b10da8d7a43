"""connectors: one row per OPC UA / Modbus gateway connector a tenant configured

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import ecoplat.db

revision: str = '0004'
down_revision: str | Sequence[str] | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'connector_configs',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('enterprise_id', sa.Integer(), nullable=False),
        sa.Column('device_id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('type', sa.String(length=64), nullable=False),
        sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'),
                  nullable=False),
        sa.Column('enabled', sa.Boolean(), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('last_error_at', ecoplat.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column('last_success_at', ecoplat.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column('config_version', sa.Integer(), nullable=False),
        sa.Column('owner', sa.String(length=120), nullable=True),
        sa.Column('lease_until', ecoplat.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column('created_at', ecoplat.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column('updated_at', ecoplat.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['device_id'], ['devices.id'],
                                name=op.f('fk_connector_configs_device_id_devices'), ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'],
                                name=op.f('fk_connector_configs_enterprise_id_enterprises'), ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_connector_configs')),
        sa.UniqueConstraint('enterprise_id', 'name', name=op.f('uq_connector_configs_enterprise_id_name')),
    )
    op.create_index('ix_connector_configs_device_id', 'connector_configs', ['device_id'])
    op.create_index('ix_connector_configs_enabled_id', 'connector_configs', ['enabled', 'id'])
    op.create_index('ix_connector_configs_enterprise_id_id', 'connector_configs', ['enterprise_id', 'id'])


def downgrade() -> None:
    op.drop_index('ix_connector_configs_enterprise_id_id', table_name='connector_configs')
    op.drop_index('ix_connector_configs_enabled_id', table_name='connector_configs')
    op.drop_index('ix_connector_configs_device_id', table_name='connector_configs')
    op.drop_table('connector_configs')
