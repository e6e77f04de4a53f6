"""products.regular_price: what a product costs outside a deal (shown beside the deal price, with the discount)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 08:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable: existing products have none, and a deal without one shows its price alone.
    op.add_column("products", sa.Column("regular_price", sa.Numeric(12, 2), nullable=True))
    op.create_check_constraint("ck_products_regular_price", "products", "regular_price > 0")


def downgrade() -> None:
    op.drop_constraint("ck_products_regular_price", "products", type_="check")
    op.drop_column("products", "regular_price")
