"""The store's first schema: objects (desired state, creation order), debug flags, the change
log (revision counter), resources (owner, ownership epoch, state) and tenant images
(replaced by placements in 0002).

A database made by the hand-written SQLite schema of earlier versions already has
``objects`` and ``debug``: they are kept (same columns) and only the new tables are added.

Revision ID: 0001
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BIGINT = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade():
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "objects" not in existing:
        op.create_table(
            "objects",
            sa.Column("seq", BIGINT, primary_key=True, autoincrement=True),
            sa.Column("kind", sa.String(32), nullable=False),
            sa.Column("id", sa.String(128), nullable=False),
            sa.Column("body", sa.Text, nullable=False),
            sa.UniqueConstraint("kind", "id"),
            sqlite_autoincrement=True)
    if "debug" not in existing:
        op.create_table(
            "debug",
            sa.Column("scope", sa.String(16), primary_key=True),
            sa.Column("key", sa.String(128), primary_key=True),
            sa.Column("reason", sa.Text, nullable=False, server_default=""),
            sa.Column("since", sa.Float, nullable=False))
    op.create_table(
        "changes",
        sa.Column("revision", BIGINT, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("id", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32)),
        sa.Column("at", sa.Float, nullable=False),
        sqlite_autoincrement=True)
    op.create_table(
        "resources",
        sa.Column("kind", sa.String(32), primary_key=True),
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False, server_default=""),
        sa.Column("epoch", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("claimed_at", sa.Float),
        sa.Column("state", sa.String(32)),
        sa.Column("last_error", sa.Text),
        sa.Column("updated_at", sa.Float))
    op.create_table(
        "tenant_images",
        sa.Column("tenant_id", sa.String(128), primary_key=True),
        sa.Column("resource_kind", sa.String(32), primary_key=True),
        sa.Column("image", sa.String(255), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False))


def downgrade():
    for table in ("tenant_images", "resources", "changes", "debug", "objects"):
        op.drop_table(table)
