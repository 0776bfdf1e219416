"""Placements replace tenant images: per tenant or per resource, the appliance image and/or
compute driver to boot (store/placements.py, astara-ctl placement).

``tenant_images`` (0001) was schema only — nothing ever wrote it; a row someone put there
by hand becomes a tenant placement of that image. A database made by the hand-written
SQLite schema of earlier versions already has ``placements`` (same columns): it is kept.

Revision ID: 0002
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade():
    bind = op.get_bind()
    existing = set(sa.inspect(bind).get_table_names())
    if "placements" not in existing:
        op.create_table(
            "placements",
            sa.Column("scope", sa.String(16), primary_key=True),
            sa.Column("key", sa.String(128), primary_key=True),
            sa.Column("driver", sa.String(64), nullable=False, server_default=""),
            sa.Column("image", sa.String(255), nullable=False, server_default=""),
            sa.Column("since", sa.Float, nullable=False))
    if "tenant_images" in existing:
        rows = bind.execute(sa.text("SELECT tenant_id, image, updated_at FROM tenant_images "
                                    "ORDER BY updated_at")).all()
        placements = sa.table("placements", sa.column("scope"), sa.column("key"),
                              sa.column("driver"), sa.column("image"), sa.column("since"))
        for tenant_id, image, updated_at in {row[0]: row for row in rows}.values():
            bind.execute(placements.delete().where(placements.c.scope == "tenant",
                                                   placements.c.key == tenant_id))
            bind.execute(placements.insert().values(scope="tenant", key=tenant_id, driver="",
                                                    image=image, since=updated_at))
        op.drop_table("tenant_images")


def downgrade():
    op.drop_table("placements")
    op.create_table(
        "tenant_images",
        sa.Column("tenant_id", sa.String(128), primary_key=True),
        sa.Column("resource_kind", sa.String(32), primary_key=True),
        sa.Column("image", sa.String(255), nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False))
