"""payments: a payment window per deal, pay_by and the paid / expired states of orders, refunds

Revision ID: 0003
Revises: 0001
Create Date: 2026-12-01 21:20:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OLD_STATUSES = "status IN ('accepted', 'confirmed', 'canceled', 'failed')"
NEW_STATUSES = "status IN ('accepted', 'confirmed', 'paid', 'expired', 'canceled', 'failed')"


def upgrade() -> None:
    # server_default 0: every existing deal keeps today's behaviour (no payment step).
    op.add_column("deals", sa.Column("payment_window_seconds", sa.Integer(), server_default="0", nullable=False))
    op.create_check_constraint(
        "ck_deals_payment_window", "deals", "payment_window_seconds >= 0 AND payment_window_seconds <= 86400"
    )
    op.add_column("orders", sa.Column("pay_by", sa.DateTime(timezone=True), nullable=True))
    op.add_column("orders", sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("orders", sa.Column("expired_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("orders", sa.Column("payment_id", sa.String(length=255), nullable=True))
    op.drop_constraint("ck_orders_status", "orders", type_="check")
    op.create_check_constraint("ck_orders_status", "orders", NEW_STATUSES)
    op.create_table(
        "refunds",
        sa.Column("id", sa.BigInteger(), nullable=False),
        sa.Column("order_id", sa.Uuid(), nullable=False),
        sa.Column("deal_id", sa.BigInteger(), nullable=False),
        sa.Column("provider", sa.String(length=16), nullable=False),
        sa.Column("payment_id", sa.String(length=255), nullable=False),
        sa.Column("refund_id", sa.String(length=255), nullable=True),
        sa.Column("amount_minor", sa.BigInteger(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("event_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("payment_id", name="uq_refunds_payment"),
    )
    op.create_index("ix_refunds_deal_id", "refunds", ["deal_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_refunds_deal_id", table_name="refunds")
    op.drop_table("refunds")
    op.execute("UPDATE orders SET status = 'confirmed' WHERE status = 'paid'")
    op.execute("UPDATE orders SET status = 'canceled', canceled_at = expired_at WHERE status = 'expired'")
    op.drop_constraint("ck_orders_status", "orders", type_="check")
    op.create_check_constraint("ck_orders_status", "orders", OLD_STATUSES)
    for column in ("payment_id", "expired_at", "paid_at", "pay_by"):
        op.drop_column("orders", column)
    op.drop_constraint("ck_deals_payment_window", "deals", type_="check")
    op.drop_column("deals", "payment_window_seconds")
