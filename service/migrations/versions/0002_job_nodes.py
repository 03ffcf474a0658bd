"""Jobs on several hosts: a job's rendezvous and the worker nodes that joined it.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as jobs:
        jobs.add_column(sa.Column("rendezvous", sa.JSON, nullable=True))
    op.create_table(
        "job_nodes",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), sa.ForeignKey("jobs.id", ondelete="CASCADE"),
                  nullable=False, index=True),
        sa.Column("rendezvous", sa.String(32), nullable=False),
        sa.Column("node_rank", sa.Integer, nullable=False),
        sa.Column("worker_id", sa.String(64), nullable=False),
        sa.Column("joined_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("job_id", "rendezvous", "node_rank", name="uq_job_nodes_rank"),
    )


def downgrade() -> None:
    op.drop_table("job_nodes")
    with op.batch_alter_table("jobs") as jobs:
        jobs.drop_column("rendezvous")
