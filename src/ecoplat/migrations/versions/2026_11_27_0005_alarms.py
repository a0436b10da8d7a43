"""alarms: rules, alarms and their ISA-18.2 transitions, comments, notification channels,
the notification outbox and in-app notifications

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import ecoplat.db

revision: str = '0005'
down_revision: str | Sequence[str] | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('alarm_rules',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('device_id', sa.Integer(), nullable=True),
    sa.Column('profile_id', sa.Integer(), nullable=True),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('params', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('deadband', sa.Float(), nullable=False),
    sa.Column('on_delay_s', sa.Float(), nullable=False),
    sa.Column('off_delay_s', sa.Float(), nullable=False),
    sa.Column('message_template', sa.String(length=500), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_alarm_rules_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alarm_rules'))
    )
    op.create_index('ix_alarm_rules_device_id', 'alarm_rules', ['device_id'], unique=False)
    op.create_index('ix_alarm_rules_enterprise_id_id', 'alarm_rules', ['enterprise_id', 'id'], unique=False)
    op.create_index('ix_alarm_rules_profile_id', 'alarm_rules', ['profile_id'], unique=False)
    op.create_table('notification_channels',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('config', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('max_priority', sa.Integer(), nullable=False),
    sa.Column('actions', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('enabled', sa.Boolean(), nullable=False),
    sa.Column('created_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_notification_channels_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notification_channels'))
    )
    op.create_index('ix_notification_channels_enterprise_id_id', 'notification_channels', ['enterprise_id', 'id'], unique=False)
    op.create_table('alarms',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=False),
    sa.Column('rule_id', sa.Integer(), nullable=True),
    sa.Column('device_id', sa.Integer(), nullable=False),
    sa.Column('site_id', sa.Integer(), nullable=True),
    sa.Column('key', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('acked', sa.Boolean(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('message', sa.String(length=1000), nullable=False),
    sa.Column('value', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('limit', sa.Float(), nullable=True),
    sa.Column('count', sa.Integer(), nullable=False),
    sa.Column('first_triggered_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('last_triggered_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('cleared_at', ecoplat.db.UTCDateTime(), nullable=True),
    sa.Column('acked_at', ecoplat.db.UTCDateTime(), nullable=True),
    sa.Column('acked_by', sa.Integer(), nullable=True),
    sa.Column('shelved_until', ecoplat.db.UTCDateTime(), nullable=True),
    sa.Column('shelved_by', sa.Integer(), nullable=True),
    sa.Column('shelve_reason', sa.String(length=500), nullable=False),
    sa.Column('closed_at', ecoplat.db.UTCDateTime(), nullable=True),
    sa.Column('created_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('updated_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['acked_by'], ['users.id'], name=op.f('fk_alarms_acked_by_users'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_alarms_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['rule_id'], ['alarm_rules.id'], name=op.f('fk_alarms_rule_id_alarm_rules'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['shelved_by'], ['users.id'], name=op.f('fk_alarms_shelved_by_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alarms'))
    )
    op.create_index('ix_alarms_device_id', 'alarms', ['device_id'], unique=False)
    op.create_index('ix_alarms_enterprise_id_first_triggered_at', 'alarms', ['enterprise_id', 'first_triggered_at'], unique=False)
    op.create_index('ix_alarms_enterprise_id_id', 'alarms', ['enterprise_id', 'id'], unique=False)
    op.create_index('ix_alarms_enterprise_id_state', 'alarms', ['enterprise_id', 'state'], unique=False)
    op.create_index('ix_alarms_rule_id_device_id_closed_at', 'alarms', ['rule_id', 'device_id', 'closed_at'], unique=False)
    op.create_index('ix_alarms_state_shelved_until', 'alarms', ['state', 'shelved_until'], unique=False)
    op.create_table('alarm_comments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('alarm_id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.ForeignKeyConstraint(['alarm_id'], ['alarms.id'], name=op.f('fk_alarm_comments_alarm_id_alarms'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_alarm_comments_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_alarm_comments_user_id_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alarm_comments'))
    )
    op.create_index('ix_alarm_comments_alarm_id_id', 'alarm_comments', ['alarm_id', 'id'], unique=False)
    op.create_table('alarm_transitions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('alarm_id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('from_state', sa.String(length=32), nullable=False),
    sa.Column('to_state', sa.String(length=32), nullable=False),
    sa.Column('at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=True),
    sa.Column('note', sa.String(length=1000), nullable=False),
    sa.Column('value', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.ForeignKeyConstraint(['alarm_id'], ['alarms.id'], name=op.f('fk_alarm_transitions_alarm_id_alarms'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_alarm_transitions_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_alarm_transitions_user_id_users'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_alarm_transitions'))
    )
    op.create_index('ix_alarm_transitions_alarm_id_id', 'alarm_transitions', ['alarm_id', 'id'], unique=False)
    op.create_index('ix_alarm_transitions_enterprise_id_at', 'alarm_transitions', ['enterprise_id', 'at'], unique=False)
    op.create_table('in_app_notifications',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=False),
    sa.Column('channel_id', sa.Integer(), nullable=True),
    sa.Column('alarm_id', sa.Integer(), nullable=True),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('title', sa.String(length=300), nullable=False),
    sa.Column('body', sa.String(length=1000), nullable=False),
    sa.Column('created_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('read_at', ecoplat.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['alarm_id'], ['alarms.id'], name=op.f('fk_in_app_notifications_alarm_id_alarms'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['channel_id'], ['notification_channels.id'], name=op.f('fk_in_app_notifications_channel_id_notification_channels'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_in_app_notifications_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_in_app_notifications'))
    )
    op.create_index('ix_in_app_notifications_enterprise_id_id', 'in_app_notifications', ['enterprise_id', 'id'], unique=False)
    op.create_table('notification_outbox',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('enterprise_id', sa.Integer(), nullable=False),
    sa.Column('channel_id', sa.Integer(), nullable=False),
    sa.Column('alarm_id', sa.Integer(), nullable=True),
    sa.Column('event', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('last_error', sa.String(length=1000), nullable=False),
    sa.Column('created_at', ecoplat.db.UTCDateTime(), nullable=False),
    sa.Column('sent_at', ecoplat.db.UTCDateTime(), nullable=True),
    sa.ForeignKeyConstraint(['alarm_id'], ['alarms.id'], name=op.f('fk_notification_outbox_alarm_id_alarms'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['channel_id'], ['notification_channels.id'], name=op.f('fk_notification_outbox_channel_id_notification_channels'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['enterprise_id'], ['enterprises.id'], name=op.f('fk_notification_outbox_enterprise_id_enterprises'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notification_outbox'))
    )
    op.create_index('ix_notification_outbox_enterprise_id_id', 'notification_outbox', ['enterprise_id', 'id'], unique=False)
    op.create_index('ix_notification_outbox_status_next_attempt_at', 'notification_outbox', ['status', 'next_attempt_at'], unique=False)


def downgrade() -> None:
    op.drop_index('ix_notification_outbox_status_next_attempt_at', table_name='notification_outbox')
    op.drop_index('ix_notification_outbox_enterprise_id_id', table_name='notification_outbox')
    op.drop_table('notification_outbox')
    op.drop_index('ix_in_app_notifications_enterprise_id_id', table_name='in_app_notifications')
    op.drop_table('in_app_notifications')
    op.drop_index('ix_alarm_transitions_enterprise_id_at', table_name='alarm_transitions')
    op.drop_index('ix_alarm_transitions_alarm_id_id', table_name='alarm_transitions')
    op.drop_table('alarm_transitions')
    op.drop_index('ix_alarm_comments_alarm_id_id', table_name='alarm_comments')
    op.drop_table('alarm_comments')
    op.drop_index('ix_alarms_state_shelved_until', table_name='alarms')
    op.drop_index('ix_alarms_rule_id_device_id_closed_at', table_name='alarms')
    op.drop_index('ix_alarms_enterprise_id_state', table_name='alarms')
    op.drop_index('ix_alarms_enterprise_id_id', table_name='alarms')
    op.drop_index('ix_alarms_enterprise_id_first_triggered_at', table_name='alarms')
    op.drop_index('ix_alarms_device_id', table_name='alarms')
    op.drop_table('alarms')
    op.drop_index('ix_notification_channels_enterprise_id_id', table_name='notification_channels')
    op.drop_table('notification_channels')
    op.drop_index('ix_alarm_rules_profile_id', table_name='alarm_rules')
    op.drop_index('ix_alarm_rules_enterprise_id_id', table_name='alarm_rules')
    op.drop_index('ix_alarm_rules_device_id', table_name='alarm_rules')
    op.drop_table('alarm_rules')
