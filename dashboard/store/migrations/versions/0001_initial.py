"""Initial schema: devices, sequence gaps, findings, events, heartbeats, command results, dead letters.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

A revision is frozen once shipped: it spells its column types out instead of
importing the live models, so later changes to the models cannot rewrite it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _json() -> sa.types.TypeEngine[Any]:
    return sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def _time() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def _message_columns() -> list[sa.Column[Any]]:
    return [
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "devices",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("first_seen", _time(), nullable=False),
        sa.Column("last_seen", _time(), nullable=False, comment="when any message of it was last received"),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("state_changed_at", _time(), nullable=True),
        sa.Column("status", _json(), nullable=True, comment="the last status message (packages, version)"),
        sa.Column("last_heartbeat_at", _time(), nullable=True),
        sa.Column("last_heartbeat", _json(), nullable=True),
        sa.Column("max_seq", sa.Integer(), nullable=True, comment="highest finding sequence number received"),
        sa.Column(
            "missing_count", sa.Integer(), nullable=False, comment="sequence numbers below max_seq never received"
        ),
        sa.Column("findings_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_devices")),
        sa.UniqueConstraint("site", "device", name=op.f("uq_devices_site_device")),
    )

    op.create_table(
        "sequence_gaps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("device_id", sa.Integer(), nullable=False),
        sa.Column("first_seq", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("detected_at", _time(), nullable=False),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_sequence_gaps_device_id_devices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sequence_gaps")),
    )
    op.create_index(op.f("ix_sequence_gaps_device_id_first_seq"), "sequence_gaps", ["device_id", "first_seq"])

    op.create_table(
        "findings",
        *_message_columns(),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("package_name", sa.String(), nullable=False),
        sa.Column("package_version", sa.String(), nullable=False),
        sa.Column("package_precision", sa.String(), nullable=False),
        sa.Column("package_profile", sa.String(), nullable=False),
        sa.Column("package_sha256", sa.String(length=64), nullable=False),
        sa.Column("study_ref", sa.String(), nullable=False),
        sa.Column("series_ref", sa.String(), nullable=False),
        sa.Column("instance_ref", sa.String(), nullable=False),
        sa.Column("accession_number", sa.String(), nullable=True),
        sa.Column("modality", sa.String(), nullable=False),
        sa.Column("frame", sa.Integer(), nullable=True),
        sa.Column("label", sa.String(), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("scores", _json(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("positive", sa.Boolean(), nullable=False),
        sa.Column("location", _json(), nullable=True),
        sa.Column("flags", _json(), nullable=False),
        sa.Column("latency_ms", _json(), nullable=False),
        sa.Column("created", _time(), nullable=False, comment="device time the finding was made"),
        sa.Column("received_at", _time(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("state_changed_at", _time(), nullable=True),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_findings_device_id_devices")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_findings")),
        sa.UniqueConstraint("message_id", name=op.f("uq_findings_message_id")),
    )
    for columns in (
        ["created"],
        ["site", "device", "created"],
        ["label", "created"],
        ["positive", "created"],
        ["state", "created"],
        ["modality", "created"],
        ["device_id", "seq"],
        ["score"],
    ):
        op.create_index(op.f(f"ix_findings_{'_'.join(columns)}"), "findings", columns)

    op.create_table(
        "events",
        *_message_columns(),
        sa.Column("site", sa.String(length=64), nullable=False),
        sa.Column("device", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("severity", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("detail", _json(), nullable=False),
        sa.Column("created", _time(), nullable=False),
        sa.Column("received_at", _time(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_events_device_id_devices")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
        sa.UniqueConstraint("message_id", name=op.f("uq_events_message_id")),
    )
    for columns in (["created"], ["device_id", "created"], ["severity", "created"]):
        op.create_index(op.f(f"ix_events_{'_'.join(columns)}"), "events", columns)

    op.create_table(
        "heartbeats",
        *_message_columns(),
        sa.Column("created", _time(), nullable=False),
        sa.Column("received_at", _time(), nullable=False),
        sa.Column("uptime_s", sa.Double(), nullable=False),
        sa.Column("queue_depth", sa.Integer(), nullable=False, comment="sum of the device's queues"),
        sa.Column("outbox_depth", sa.Integer(), nullable=False),
        sa.Column("latency_ms_p50", sa.Double(), nullable=True),
        sa.Column("latency_ms_p95", sa.Double(), nullable=True),
        sa.Column("degraded", sa.Boolean(), nullable=False, comment="an engine runs degraded (e.g. fell back to CPU)"),
        sa.Column("alarms", _json(), nullable=False),
        sa.Column("payload", _json(), nullable=False, comment="the whole heartbeat message"),
        sa.ForeignKeyConstraint(
            ["device_id"], ["devices.id"], name=op.f("fk_heartbeats_device_id_devices"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_heartbeats")),
    )
    op.create_index(op.f("ix_heartbeats_device_id_id"), "heartbeats", ["device_id", "id"])

    op.create_table(
        "command_results",
        *_message_columns(),
        sa.Column("correlation_id", sa.String(length=128), nullable=False),
        sa.Column("ok", sa.Boolean(), nullable=False),
        sa.Column("result", _json(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created", _time(), nullable=False),
        sa.Column("received_at", _time(), nullable=False),
        sa.ForeignKeyConstraint(["device_id"], ["devices.id"], name=op.f("fk_command_results_device_id_devices")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_command_results")),
        sa.UniqueConstraint("message_id", name=op.f("uq_command_results_message_id")),
    )
    op.create_index(op.f("ix_command_results_correlation_id"), "command_results", ["correlation_id"])

    op.create_table(
        "dead_letters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("site", sa.String(length=64), nullable=True, comment="from the topic, when it parses"),
        sa.Column("device", sa.String(length=64), nullable=True, comment="from the topic, when it parses"),
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("message_id", sa.String(length=128), nullable=True, comment="the payload's id, when it has one"),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("payload_text", sa.Text(), nullable=True, comment="the payload as text, when it is UTF-8"),
        sa.Column("payload_size", sa.Integer(), nullable=False, comment="bytes received (payload may be truncated)"),
        sa.Column(
            "acked",
            sa.Boolean(),
            nullable=False,
            comment="acknowledged to its device so it leaves the outbox",
        ),
        sa.Column("received_at", _time(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_dead_letters")),
    )
    op.create_index(op.f("ix_dead_letters_received_at"), "dead_letters", ["received_at"])
    op.create_index(op.f("ix_dead_letters_reason_received_at"), "dead_letters", ["reason", "received_at"])

    op.create_table(
        "dead_letter_counts",
        sa.Column("reason", sa.String(length=32), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("first_at", _time(), nullable=False),
        sa.Column("last_at", _time(), nullable=False),
        sa.PrimaryKeyConstraint("reason", name=op.f("pk_dead_letter_counts")),
    )


def downgrade() -> None:
    for table in (
        "dead_letter_counts",
        "dead_letters",
        "command_results",
        "heartbeats",
        "events",
        "findings",
        "sequence_gaps",
        "devices",
    ):
        op.drop_table(table)
