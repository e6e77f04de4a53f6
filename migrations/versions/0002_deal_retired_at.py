"""deals.retired_at: an ended deal whose gate keys left Redis

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01 21:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("deals", sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))
    # The retire pass looks for ended deals not retired yet, oldest end first. A partial index: a deal
    # leaves it when it retires, so the index holds only the last few ended deals however old the shop is.
    op.create_index(
        "ix_deals_ended_unretired",
        "deals",
        ["ends_at"],
        postgresql_where=sa.text("status = 'ended' AND retired_at IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_deals_ended_unretired", table_name="deals")
    op.drop_column("deals", "retired_at")
