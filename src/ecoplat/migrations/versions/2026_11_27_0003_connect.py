"""connect: device profiles, devices, attributes, reject counters and the recent-errors log

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import ecoplat.db

revision: str = '0003'
down_revision: str | Sequence[str] | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('device_profiles',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('telemetry_keys', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('inactivity_timeout_s', sa.Integer(), nullable=False),
    sa.Column('default_rules', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('source_iri', sa.String(length=500), nullable=False),
    sa.Column('created_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_device_profiles_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_device_profiles')),
    sa.UniqueConstraint('enterprise_id', 'name', name=op.f('uq_device_profiles_enterprise_id_name'))
    )
    with op.batch_alter_table('device_profiles', schema=None) as batch_op:
        batch_op.create_index('ix_device_profiles_enterprise_id_id', ['enterprise_id', 'id'], unique=False)

    op.create_table('devices',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=True),
    sa.Column('profile_id', sa.Integer(), nullable=True),
    sa.Column('equipment_id', sa.Integer(), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('type', sa.String(length=100), nullable=False),
    sa.Column('label', sa.String(length=200), nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=True),
    sa.Column('token_prefix', sa.String(length=16), nullable=False),
    sa.Column('token_revoked', sa.Boolean(), nullable=False),
    sa.Column('is_gateway', sa.Boolean(), nullable=False),
    sa.Column('gateway_id', sa.Integer(), nullable=True),
    sa.Column('claim_code_hash', sa.String(length=64), nullable=True),
    sa.Column('claim_expires_at', ecoplat.db.UTCDateTime(), nullable=True),
    sa.Column('claimed_at', ecoplat.db.UTCDateTime(), nullable=True),
    sa.Column('provisioned_by_enterprise_id', sa.Integer(), nullable=True),
    sa.Column('last_seen_at', ecoplat.db.UTCDateTime(), nullable=True),
    sa.Column('last_activity', sa.String(length=32), nullable=False),
    sa.Column('messages_total', sa.BigInteger(), nullable=False),
    sa.Column('points_total', sa.BigInteger(), nullable=False),
    sa.Column('errors_total', sa.BigInteger(), nullable=False),
    sa.Column('created_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_devices_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['equipment_id'], ['equipment.id'], name=op.f('fk_devices_equipment_id_equipment'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['gateway_id'], ['devices.id'], name=op.f('fk_devices_gateway_id_devices'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['profile_id'], ['device_profiles.id'], name=op.f('fk_devices_profile_id_device_profiles'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['provisioned_by_enterprise_id'], ['enterprises.id'], name=op.f('fk_devices_provisioned_by_enterprise_id_enterprises'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_devices')),
    sa.UniqueConstraint('claim_code_hash', name=op.f('uq_devices_claim_code_hash')),
    sa.UniqueConstraint('enterprise_id', 'name', name=op.f('uq_devices_enterprise_id_name')),
    sa.UniqueConstraint('token_hash', name=op.f('uq_devices_token_hash')),
    # Device ids key telemetry and alarms: never hand a deleted device's id to a new device.
    sqlite_autoincrement=True,
    )
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.create_index('ix_devices_enterprise_id_equipment_id_id', ['enterprise_id', 'equipment_id', 'id'], unique=False)
        batch_op.create_index('ix_devices_enterprise_id_id', ['enterprise_id', 'id'], unique=False)
        batch_op.create_index('ix_devices_enterprise_id_profile_id_id', ['enterprise_id', 'profile_id', 'id'], unique=False)
        batch_op.create_index('ix_devices_gateway_id_name', ['gateway_id', 'name'], unique=False)
        batch_op.create_index('ix_devices_provisioned_by_id', ['provisioned_by_enterprise_id', 'id'], unique=False)

    op.create_table('device_attributes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('scope', sa.Enum('client', 'server', 'shared', name='attribute_scope', native_enum=False, create_constraint=True, length=16), nullable=False),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('value', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('updated_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], name=op.f('fk_device_attributes_device_id_devices'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_device_attributes')),
    sa.UniqueConstraint('device_id', 'scope', 'key', name=op.f('uq_device_attributes_device_id_scope_key'))
    )
    op.create_table('device_error_log',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=True),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], name=op.f('fk_device_error_log_device_id_devices'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_device_error_log'))
    )
    with op.batch_alter_table('device_error_log', schema=None) as batch_op:
        batch_op.create_index('ix_device_error_log_device_id_id', ['device_id', 'id'], unique=False)

    op.create_table('device_rejects',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=True),
    sa.Column('enterprise_id', sa.Integer(), nullable=True),
    sa.Column('reason', sa.String(length=32), nullable=False),
    sa.Column('count', sa.BigInteger(), nullable=False),
    sa.Column('last_detail', sa.Text(), nullable=False),
    sa.Column('last_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['device_id'], ['devices.id'], name=op.f('fk_device_rejects_device_id_devices'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_device_rejects_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_device_rejects')),
    sa.UniqueConstraint('device_id', 'reason', name=op.f('uq_device_rejects_device_id_reason'))
    )
    with op.batch_alter_table('device_rejects', schema=None) as batch_op:
        batch_op.create_index('ix_device_rejects_enterprise_id', ['enterprise_id'], unique=False)


    if op.get_bind().dialect.name == "postgresql":
        # Device name search (lower(name) LIKE '%…%') through a trigram index; pg_trgm is created
        # by 0001. On SQLite the search scans one enterprise's devices through its index.
        op.execute("CREATE INDEX ix_devices_name_trgm ON devices USING gin (lower(name) gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_devices_name_trgm")
    with op.batch_alter_table('device_rejects', schema=None) as batch_op:
        batch_op.drop_index('ix_device_rejects_enterprise_id')

    op.drop_table('device_rejects')
    with op.batch_alter_table('device_error_log', schema=None) as batch_op:
        batch_op.drop_index('ix_device_error_log_device_id_id')

    op.drop_table('device_error_log')
    op.drop_table('device_attributes')
    with op.batch_alter_table('devices', schema=None) as batch_op:
        batch_op.drop_index('ix_devices_provisioned_by_id')
        batch_op.drop_index('ix_devices_gateway_id_name')
        batch_op.drop_index('ix_devices_enterprise_id_profile_id_id')
        batch_op.drop_index('ix_devices_enterprise_id_id')
        batch_op.drop_index('ix_devices_enterprise_id_equipment_id_id')

    op.drop_table('devices')
    with op.batch_alter_table('device_profiles', schema=None) as batch_op:
        batch_op.drop_index('ix_device_profiles_enterprise_id_id')

    op.drop_table('device_profiles')
