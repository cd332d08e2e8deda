"""The web UI's tables: users, sessions, API tokens, login throttling, feedback, the audit log.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

Also indexes findings on ``received_at`` and ``state_changed_at`` (the live
feed polls them) and on ``(state, score)`` (the worklist's "new findings,
highest score first"). Frozen once shipped, like 0001: column types are
spelled out.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_index(op.f("ix_findings_received_at"), "findings", ["received_at"])
    op.create_index(op.f("ix_findings_state_changed_at"), "findings", ["state_changed_at"])
    op.create_index(op.f("ix_findings_state_score"), "findings", ["state", "score"])

    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False, comment="scrypt$N$r$p$salt$hash"),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=True, comment="who created it; NULL: the command line"),
        sa.Column("password_changed_at", _time(), nullable=False),
        sa.Column("last_login_at", _time(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )

    op.create_table(
        "web_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column(
            "csrf_token",
            sa.String(length=64),
            nullable=False,
            comment="every form and state-changing request carries it",
        ),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("last_seen_at", _time(), nullable=False),
        sa.Column("expires_at", _time(), nullable=False, comment="absolute end, whatever the activity"),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("user_agent", sa.String(length=256), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_web_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_web_sessions")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_web_sessions_token_hash")),
    )
    op.create_index(op.f("ix_web_sessions_user_id"), "web_sessions", ["user_id"])

    op.create_table(
        "api_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column(
            "prefix", sa.String(length=16), nullable=False, comment="the token's first characters, to recognise it"
        ),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("expires_at", _time(), nullable=True),
        sa.Column("last_used_at", _time(), nullable=True),
        sa.Column("revoked_at", _time(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_api_tokens_token_hash")),
    )

    op.create_table(
        "login_throttle",
        sa.Column("key", sa.String(length=200), nullable=False, comment="user:<name> or ip:<address>"),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_started_at", _time(), nullable=False),
        sa.Column("locked_until", _time(), nullable=True),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_login_throttle")),
    )

    op.create_table(
        "feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("finding_id", sa.Integer(), nullable=False),
        sa.Column("acknowledged_by", sa.String(length=64), nullable=False),
        sa.Column("acknowledged_at", _time(), nullable=False),
        sa.Column("reviewed_by", sa.String(length=64), nullable=True),
        sa.Column("reviewed_at", _time(), nullable=True),
        sa.Column("verdict", sa.String(length=16), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["finding_id"], ["findings.id"], name=op.f("fk_feedback_finding_id_findings"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_feedback")),
        sa.UniqueConstraint("finding_id", name=op.f("uq_feedback_finding_id")),
    )
    op.create_index(op.f("ix_feedback_reviewed_at"), "feedback", ["reviewed_at"])

    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("at", _time(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False, comment="username, token:<name>, or cli"),
        sa.Column("role", sa.String(length=16), nullable=True),
        sa.Column("client_ip", sa.String(length=64), nullable=True),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=128), nullable=True, comment="e.g. finding:42, user:7"),
        sa.Column("detail", sa.Text(), nullable=False, comment="canonical JSON"),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
        sa.UniqueConstraint("hash", name=op.f("uq_audit_log_hash")),
    )
    op.create_index(op.f("ix_audit_log_at"), "audit_log", ["at"])
    op.create_index(op.f("ix_audit_log_target"), "audit_log", ["target"])


def downgrade() -> None:
    for table in ("audit_log", "feedback", "login_throttle", "api_tokens", "web_sessions", "users"):
        op.drop_table(table)
    op.drop_index(op.f("ix_findings_state_score"), table_name="findings")
    op.drop_index(op.f("ix_findings_state_changed_at"), table_name="findings")
    op.drop_index(op.f("ix_findings_received_at"), table_name="findings")
