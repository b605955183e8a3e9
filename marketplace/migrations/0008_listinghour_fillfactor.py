"""Leave room on every slot-calendar page for the updates a round makes.

A matching round adds to ``cards_sold`` on tens of thousands of listing-hours at once. That column
is in no index, so PostgreSQL can update each row in place on its own page (a HOT update) and skip
all five indexes, but only if the page has room for the new row version; at the default fill
factor (100) every page is full after the calendar is written, and each update then writes a new
heap page and an entry in every index. Measured on the end-to-end bench (36,000 listing-hours in
one round): 1.1 s at fill factor 100, 0.17 s at 60. Rows written before this migration keep their
packing until the table is rewritten (VACUUM FULL or CLUSTER).
"""
from django.db import migrations


def fillfactor_set(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":  # a storage parameter SQLite does not have
        schema_editor.execute("ALTER TABLE marketplace_listinghour SET (fillfactor = 60)")


def fillfactor_reset(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute("ALTER TABLE marketplace_listinghour RESET (fillfactor)")


class Migration(migrations.Migration):
    dependencies = [("marketplace", "0007_merge_0006_i10_gateway_0006_i9a_related_party")]

    operations = [
        migrations.RunPython(fillfactor_set, fillfactor_reset),
    ]
