"""Fewer index entries and foreign-key checks for each allocation a round writes.

- ``allocation.round_id`` is never looked up (a round's figures are on its own row): no index.
- ``hold.reference`` (billing 0011) is looked up by equality only: a unique constraint, without
  the ``varchar_pattern_ops`` twin index ``unique=True`` adds.
- ``allocationpart.allocation_id`` is the first column of the unique (allocation, node) index.
- An allocation part's listing and node are checked by one foreign key, ``(listing_id, node_id)``
  to ``marketplace_listing (id, node_id)``, instead of two: it also says the part's node is its
  listing's. Deferred to commit like Django's own.

Measured on the end-to-end bench (18,574 allocations in one round): see README, *Matching*.
"""
import django.db.models.deletion
from django.db import migrations, models

PART_FK = ("ALTER TABLE marketplace_allocationpart ADD CONSTRAINT allocationpart_listing_node_fk"
           " FOREIGN KEY (listing_id, node_id) REFERENCES marketplace_listing (id, node_id)"
           " DEFERRABLE INITIALLY DEFERRED")


def part_fk_create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(PART_FK)


def part_fk_drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE marketplace_allocationpart DROP CONSTRAINT allocationpart_listing_node_fk")


class Migration(migrations.Migration):

    dependencies = [
        ('marketplace', '0011_listinghour_sold_table'),
    ]

    operations = [
        migrations.AlterField(
            model_name='allocation',
            name='round_id',
            field=models.CharField(blank=True, max_length=100),
        ),
        migrations.AlterField(
            model_name='allocationpart',
            name='allocation',
            field=models.ForeignKey(db_index=False, on_delete=django.db.models.deletion.CASCADE, related_name='parts', to='marketplace.allocation'),
        ),
        migrations.AlterField(
            model_name='allocationpart',
            name='listing',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='allocation_parts', to='marketplace.listing'),
        ),
        migrations.AlterField(
            model_name='allocationpart',
            name='node',
            field=models.ForeignKey(db_constraint=False, on_delete=django.db.models.deletion.PROTECT, related_name='allocation_parts', to='marketplace.node'),
        ),
        migrations.AddConstraint(
            model_name='listing',
            constraint=models.UniqueConstraint(fields=('id', 'node'), name='listing_id_node_unique'),
        ),
        migrations.RunPython(part_fk_create, part_fk_drop),
    ]
