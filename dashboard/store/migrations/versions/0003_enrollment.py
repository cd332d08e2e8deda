"""Enrollment of appliances, signed packages and over-the-air rollouts (issue 7).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

Enrollment tokens and device credentials keep only the SHA-256 of their
tokens. Packages are named by the SHA-256 of their file; a rollout is one
package going to one device, with the steps the device reported. Frozen once
shipped, like 0001 and 0002: column types are spelled out.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "packages",
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("profile", sa.String(length=64), nullable=False),
        sa.Column("precision", sa.String(length=16), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("signer_key_id", sa.String(length=64), nullable=False),
        sa.Column("uploaded_by", sa.String(length=64), nullable=False),
        sa.Column("uploaded_at", _time(), nullable=False),
        sa.Column("file_path", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("sha256", name=op.f("pk_packages")),
    )

    op.create_table(
        "enrollment_tokens",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column(
            "prefix", sa.String(length=16), nullable=False, comment="the token's first characters, to recognise it"
        ),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=True, comment="the only device name it enrolls; NULL: any"),
        sa.Column("device_group", sa.String(length=64), nullable=True, comment="the group the device joins"),
        sa.Column(
            "package_sha256",
            sa.String(length=64),
            nullable=True,
            comment="the package offered to the device at enrollment",
        ),
        sa.Column("created_by", sa.String(length=64), nullable=False),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("expires_at", _time(), nullable=False),
        sa.Column("used_at", _time(), nullable=True),
        sa.Column("used_by", sa.String(length=129), nullable=True, comment="site/device it enrolled"),
        sa.Column("revoked_at", _time(), nullable=True),
        sa.ForeignKeyConstraint(
            ["package_sha256"], ["packages.sha256"], name=op.f("fk_enrollment_tokens_package_sha256_packages")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollment_tokens")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_enrollment_tokens_token_hash")),
    )

    op.create_table(
        "device_credentials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("enrolled_at", _time(), nullable=False),
        sa.Column(
            "public_key_sha256", sa.String(length=64), nullable=False, comment="SHA-256 of the CSR's public key (DER)"
        ),
        sa.Column("device_group", sa.String(length=64), nullable=True),
        sa.Column("profile", sa.String(length=64), nullable=True),
        sa.Column("medge_version", sa.String(length=64), nullable=True),
        sa.Column("enrollment_token_id", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_device_credentials_device_id_devices"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["enrollment_token_id"],
            ["enrollment_tokens.id"],
            name=op.f("fk_device_credentials_enrollment_token_id_enrollment_tokens"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_device_credentials")),
        sa.UniqueConstraint("device_id", name=op.f("uq_device_credentials_device_id")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_device_credentials_token_hash")),
    )
    op.create_index(op.f("ix_device_credentials_device_group"), "device_credentials", ["device_group"])

    op.create_table(
        "rollouts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("update_id", sa.String(length=128), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("package_sha256", sa.String(length=64), nullable=False),
        sa.Column("force", sa.Boolean(), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("command_id", sa.String(length=128), nullable=True, comment="the update command's id"),
        sa.Column("created_at", _time(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("last_step", sa.String(length=16), nullable=True),
        sa.Column("progress", sa.Double(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("updated_at", _time(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_rollouts_device_id_devices"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["package_sha256"], ["packages.sha256"], name=op.f("fk_rollouts_package_sha256_packages")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollouts")),
        sa.UniqueConstraint("update_id", name=op.f("uq_rollouts_update_id")),
    )
    op.create_index(op.f("ix_rollouts_device_id_created_at"), "rollouts", ["device_id", "created_at"])
    op.create_index(op.f("ix_rollouts_state"), "rollouts", ["state"])
    op.create_index(op.f("ix_rollouts_command_id"), "rollouts", ["command_id"])

    op.create_table(
        "rollout_steps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("rollout_id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=False, comment="the event or command result's id"),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("progress", sa.Double(), nullable=True),
        sa.Column("created", _time(), nullable=False, comment="device time"),
        sa.Column("received_at", _time(), nullable=False),
        sa.ForeignKeyConstraint(
            ["rollout_id"], ["rollouts.id"], name=op.f("fk_rollout_steps_rollout_id_rollouts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_rollout_steps")),
        sa.UniqueConstraint("message_id", name=op.f("uq_rollout_steps_message_id")),
    )
    op.create_index(op.f("ix_rollout_steps_rollout_id_id"), "rollout_steps", ["rollout_id", "id"])


def downgrade() -> None:
    for table in ("rollout_steps", "rollouts", "device_credentials", "enrollment_tokens", "packages"):
        op.drop_table(table)
