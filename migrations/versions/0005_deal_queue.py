"""deals.queue_*: the waiting room in front of a deal's gate

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 08:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

CHECK = (
    "queue_rate IS NULL OR (queue_rate >= 1 AND queue_rate <= 100000"
    " AND queue_opens_before_seconds >= 0 AND queue_opens_before_seconds <= 604800"
    " AND queue_pow_bits >= 0 AND queue_pow_bits <= 32"
    " AND (queue_max_live_passes IS NULL OR queue_max_live_passes >= 1))"
)


def upgrade() -> None:
    # queue_rate NULL: every existing deal keeps today's behaviour (no waiting room).
    op.add_column("deals", sa.Column("queue_rate", sa.Integer(), nullable=True))
    op.add_column("deals", sa.Column("queue_opens_before_seconds", sa.Integer(), server_default="900", nullable=False))
    op.add_column("deals", sa.Column("queue_pow_bits", sa.Integer(), server_default="0", nullable=False))
    op.add_column("deals", sa.Column("queue_max_live_passes", sa.Integer(), nullable=True))
    op.add_column("deals", sa.Column("queue_paused", sa.Boolean(), server_default=sa.text("false"), nullable=False))
    op.create_check_constraint("ck_deals_queue", "deals", CHECK)


def downgrade() -> None:
    op.drop_constraint("ck_deals_queue", "deals", type_="check")
    for column in ("queue_paused", "queue_max_live_passes", "queue_pow_bits", "queue_opens_before_seconds", "queue_rate"):
        op.drop_column("deals", column)
