"""A finding's patient ID, kept only when the appliance's PHI policy sends it (issue 8).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27

Frozen once shipped, like the earlier revisions.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("findings") as table:
        table.add_column(sa.Column("patient_id", sa.String(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("findings") as table:
        table.drop_column("patient_id")
