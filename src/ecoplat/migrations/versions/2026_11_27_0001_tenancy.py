"""tenancy

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import ecoplat.db

revision: str = '0001'
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('ecosystems',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('slug', sa.String(length=64), nullable=False),
    sa.Column('name_en', sa.String(length=200), nullable=False),
    sa.Column('name_zh', sa.String(length=200), nullable=False),
    sa.Column('industry', sa.String(length=100), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('created_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ecosystems')),
    sa.UniqueConstraint('slug', name=op.f('uq_ecosystems_slug'))
    )
    op.create_table('enterprises',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('country', sa.String(length=2), nullable=False),
    sa.Column('isic_class', sa.String(length=4), nullable=False),
    sa.Column('size_class', sa.Enum('large', 'medium', 'small', 'micro', name='size_class', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('limits', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('created_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_enterprises'))
    )
    with op.batch_alter_table('enterprises', schema=None) as batch_op:
        batch_op.create_index('ix_enterprises_country_id', ['country', 'id'], unique=False)
        batch_op.create_index('ix_enterprises_isic_class_id', ['isic_class', 'id'], unique=False)
        batch_op.create_index('ix_enterprises_name_id', ['name', 'id'], unique=False)
        batch_op.create_index('ix_enterprises_size_class_id', ['size_class', 'id'], unique=False)

    op.create_table('ecosystem_memberships',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('ecosystem_id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=False),
    sa.Column('role', sa.Enum('co_builder', 'member', name='membership_role', native_enum=False, create_constraint=True, length=32), nullable=False),
    sa.Column('created_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['ecosystem_id'], ['ecosystems.id'], name=op.f('fk_ecosystem_memberships_ecosystem_id_ecosystems'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_ecosystem_memberships_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ecosystem_memberships')),
    sa.UniqueConstraint('ecosystem_id', 'enterprise_id', name=op.f('uq_ecosystem_memberships_ecosystem_id_enterprise_id'))
    )
    with op.batch_alter_table('ecosystem_memberships', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_ecosystem_memberships_ecosystem_id'), ['ecosystem_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_ecosystem_memberships_enterprise_id'), ['enterprise_id'], unique=False)

    op.create_table('sites',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('timezone', sa.String(length=64), nullable=False),
    sa.Column('address', sa.String(length=400), nullable=False),
    sa.Column('latitude', sa.Float(), nullable=True),
    sa.Column('longitude', sa.Float(), nullable=True),
    sa.Column('created_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_sites_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_sites'))
    )
    with op.batch_alter_table('sites', schema=None) as batch_op:
        batch_op.create_index('ix_sites_enterprise_id_id', ['enterprise_id', 'id'], unique=False)

    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=False),
    sa.Column('email', sa.String(length=320), nullable=False),
    sa.Column('full_name', sa.String(length=200), nullable=False),
    sa.Column('password_hash', sa.String(length=200), nullable=False),
    sa.Column('roles', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('locale', sa.String(length=10), nullable=False),
    sa.Column('is_active', sa.Boolean(), nullable=False),
    sa.Column('token_version', sa.Integer(), nullable=False),
    sa.Column('failed_login_count', sa.Integer(), nullable=False),
    sa.Column('last_failed_login_at', ecoplat.db.UTCDateTime(), nullable=True),
    sa.Column('last_login_at', ecoplat.db.UTCDateTime(), nullable=True),
    sa.Column('created_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_users_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('email', name=op.f('uq_users_email'))
    )
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.create_index('ix_users_enterprise_id_id', ['enterprise_id', 'id'], unique=False)

    op.create_table('api_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('roles', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('expires_at', ecoplat.db.UTCDateTime(), nullable=True),
    sa.Column('last_used_at', ecoplat.db.UTCDateTime(), nullable=True),
    sa.Column('revoked_at', ecoplat.db.UTCDateTime(), nullable=True),
    sa.Column('created_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_api_keys_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_api_keys_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys')),
    sa.UniqueConstraint('key_hash', name=op.f('uq_api_keys_key_hash'))
    )
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.create_index('ix_api_keys_enterprise_id_id', ['enterprise_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_api_keys_user_id'), ['user_id'], unique=False)

    op.create_table('areas',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('created_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_areas_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_areas_site_id_sites'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_areas'))
    )
    with op.batch_alter_table('areas', schema=None) as batch_op:
        batch_op.create_index('ix_areas_enterprise_id_id', ['enterprise_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_areas_site_id'), ['site_id'], unique=False)

    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=True),
    sa.Column('actor_user_id', sa.Integer(), nullable=True),
    sa.Column('actor', sa.String(length=320), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('entity_type', sa.String(length=64), nullable=False),
    sa.Column('entity_id', sa.String(length=64), nullable=False),
    sa.Column('before', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('after', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('ip', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['actor_user_id'], ['users.id'], name=op.f('fk_audit_events_actor_user_id_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_audit_events_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_audit_events'))
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index('ix_audit_events_enterprise_id_id', ['enterprise_id', 'id'], unique=False)
        batch_op.create_index('ix_audit_events_entity', ['entity_type', 'entity_id'], unique=False)
        batch_op.create_index('ix_audit_events_enterprise_id_action_id', ['enterprise_id', 'action', 'id'], unique=False)
        batch_op.create_index('ix_audit_events_enterprise_id_entity_type_id', ['enterprise_id', 'entity_type', 'id'], unique=False)
        batch_op.create_index('ix_audit_events_enterprise_id_actor_id', ['enterprise_id', 'actor', 'id'], unique=False)

    op.create_table('lines',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=False),
    sa.Column('area_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('created_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['area_id'], ['areas.id'], name=op.f('fk_lines_area_id_areas'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_lines_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_lines'))
    )
    with op.batch_alter_table('lines', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_lines_area_id'), ['area_id'], unique=False)
        batch_op.create_index('ix_lines_enterprise_id_id', ['enterprise_id', 'id'], unique=False)

    op.create_table('workstations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=False),
    sa.Column('line_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('code', sa.String(length=64), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('created_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_workstations_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['line_id'], ['lines.id'], name=op.f('fk_workstations_line_id_lines'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_workstations'))
    )
    with op.batch_alter_table('workstations', schema=None) as batch_op:
        batch_op.create_index('ix_workstations_enterprise_id_id', ['enterprise_id', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_workstations_line_id'), ['line_id'], unique=False)

    op.create_table('equipment',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=False),
    sa.Column('area_id', sa.Integer(), nullable=True),
    sa.Column('line_id', sa.Integer(), nullable=True),
    sa.Column('workstation_id', sa.Integer(), nullable=True),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('tag', sa.String(length=64), nullable=False),
    sa.Column('equipment_type_iri', sa.String(length=500), nullable=False),
    sa.Column('manufacturer', sa.String(length=200), nullable=False),
    sa.Column('model', sa.String(length=200), nullable=False),
    sa.Column('serial_number', sa.String(length=200), nullable=False),
    sa.Column('created_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['area_id'], ['areas.id'], name=op.f('fk_equipment_area_id_areas'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_equipment_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['line_id'], ['lines.id'], name=op.f('fk_equipment_line_id_lines'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['site_id'], ['sites.id'], name=op.f('fk_equipment_site_id_sites'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['workstation_id'], ['workstations.id'], name=op.f('fk_equipment_workstation_id_workstations'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_equipment'))
    )
    with op.batch_alter_table('equipment', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_equipment_area_id'), ['area_id'], unique=False)
        batch_op.create_index('ix_equipment_enterprise_id_id', ['enterprise_id', 'id'], unique=False)
        batch_op.create_index('ix_equipment_enterprise_id_equipment_type_iri_id', ['enterprise_id', 'equipment_type_iri', 'id'], unique=False)
        batch_op.create_index(batch_op.f('ix_equipment_line_id'), ['line_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_equipment_site_id'), ['site_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_equipment_workstation_id'), ['workstation_id'], unique=False)

    _create_enterprise_name_search()


# Enterprise name search must stay index-backed at 100,000 enterprises, with substring matches
# that work for Chinese names too (no word boundaries): a trigram index on either database.
# SQLite: an external-content FTS5 table with the trigram tokenizer, kept in step by triggers.
_SQLITE_FTS = [
    "CREATE VIRTUAL TABLE enterprises_fts USING fts5(name, content='enterprises', content_rowid='id', "
    "tokenize='trigram')",
    "CREATE TRIGGER enterprises_fts_ai AFTER INSERT ON enterprises BEGIN "
    "INSERT INTO enterprises_fts(rowid, name) VALUES (new.id, new.name); END",
    "CREATE TRIGGER enterprises_fts_ad AFTER DELETE ON enterprises BEGIN "
    "INSERT INTO enterprises_fts(enterprises_fts, rowid, name) VALUES ('delete', old.id, old.name); END",
    "CREATE TRIGGER enterprises_fts_au AFTER UPDATE OF name ON enterprises BEGIN "
    "INSERT INTO enterprises_fts(enterprises_fts, rowid, name) VALUES ('delete', old.id, old.name); "
    "INSERT INTO enterprises_fts(rowid, name) VALUES (new.id, new.name); END",
    "INSERT INTO enterprises_fts(enterprises_fts) VALUES ('rebuild')",
]


def _create_enterprise_name_search() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for statement in _SQLITE_FTS:
            op.execute(statement)
    elif dialect == "postgresql":
        # pg_trgm is a trusted extension (PostgreSQL 13+): a database owner may create it.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        op.execute("CREATE INDEX ix_enterprises_name_trgm ON enterprises USING gin (name gin_trgm_ops)")


def _drop_enterprise_name_search() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        for trigger in ("enterprises_fts_ai", "enterprises_fts_ad", "enterprises_fts_au"):
            op.execute(f"DROP TRIGGER IF EXISTS {trigger}")
        op.execute("DROP TABLE IF EXISTS enterprises_fts")
    elif dialect == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_enterprises_name_trgm")


def downgrade() -> None:
    _drop_enterprise_name_search()
    with op.batch_alter_table('equipment', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_equipment_workstation_id'))
        batch_op.drop_index(batch_op.f('ix_equipment_site_id'))
        batch_op.drop_index(batch_op.f('ix_equipment_line_id'))
        batch_op.drop_index('ix_equipment_enterprise_id_equipment_type_iri_id')
        batch_op.drop_index('ix_equipment_enterprise_id_id')
        batch_op.drop_index(batch_op.f('ix_equipment_area_id'))

    op.drop_table('equipment')
    with op.batch_alter_table('workstations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_workstations_line_id'))
        batch_op.drop_index('ix_workstations_enterprise_id_id')

    op.drop_table('workstations')
    with op.batch_alter_table('lines', schema=None) as batch_op:
        batch_op.drop_index('ix_lines_enterprise_id_id')
        batch_op.drop_index(batch_op.f('ix_lines_area_id'))

    op.drop_table('lines')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_events_enterprise_id_actor_id')
        batch_op.drop_index('ix_audit_events_enterprise_id_entity_type_id')
        batch_op.drop_index('ix_audit_events_enterprise_id_action_id')
        batch_op.drop_index('ix_audit_events_entity')
        batch_op.drop_index('ix_audit_events_enterprise_id_id')

    op.drop_table('audit_events')
    with op.batch_alter_table('areas', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_areas_site_id'))
        batch_op.drop_index('ix_areas_enterprise_id_id')

    op.drop_table('areas')
    with op.batch_alter_table('api_keys', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_api_keys_user_id'))
        batch_op.drop_index('ix_api_keys_enterprise_id_id')

    op.drop_table('api_keys')
    with op.batch_alter_table('users', schema=None) as batch_op:
        batch_op.drop_index('ix_users_enterprise_id_id')

    op.drop_table('users')
    with op.batch_alter_table('sites', schema=None) as batch_op:
        batch_op.drop_index('ix_sites_enterprise_id_id')

    op.drop_table('sites')
    with op.batch_alter_table('ecosystem_memberships', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_ecosystem_memberships_enterprise_id'))
        batch_op.drop_index(batch_op.f('ix_ecosystem_memberships_ecosystem_id'))

    op.drop_table('ecosystem_memberships')
    with op.batch_alter_table('enterprises', schema=None) as batch_op:
        batch_op.drop_index('ix_enterprises_size_class_id')
        batch_op.drop_index('ix_enterprises_name_id')
        batch_op.drop_index('ix_enterprises_isic_class_id')
        batch_op.drop_index('ix_enterprises_country_id')

    op.drop_table('enterprises')
    op.drop_table('ecosystems')
