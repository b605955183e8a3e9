"""The sold hours of the slot calendar in a table of their own, kept by PostgreSQL itself.

Quotes and explain read a listing's free calendar as its ``[start, end)`` minus its sold hours
(``marketplace.selectors``), so they need the sold hours, and the fully sold ones, without
scanning every listed hour. Migrations 0008 and 0009 gave them partial indexes on
``marketplace_listinghour`` (``WHERE cards_sold > 0`` and ``... >= cards_offered``). But an index
whose predicate reads ``cards_sold`` makes every sale a non-HOT update: the new row version goes
to another page and into all seven indexes of the table, where a HOT update touches none. A
matching round adds to ``cards_sold`` on tens of thousands of listing-hours at once; on the
end-to-end bench (36,000 of them in one round) that update took 0.8 s with the partial indexes
and 0.13 s without.

So the sold hours move to ``marketplace_listinghoursold`` (listing_id, hour, free cards), one row
per listing-hour with ``cards_sold > 0``, with the fully sold ones (``free = 0``) in a partial
index. Statement-level triggers with transition tables keep it exact after every INSERT, UPDATE,
DELETE and TRUNCATE of the calendar, whoever writes it (services, rounds, the simulation's
set-based calendar, tests, a psql session): a derived index the database maintains, written once
per statement for the rows it changed (one MERGE per update). Nothing in Python writes it. A row's
listing and hour are fixed (a trigger refuses to change them), which is what lets the update
trigger read the new rows alone, and (listing, hour) becomes unique (it was the same index, not
unique), which the table's key needs. The functions pin the search_path they were created with.

Triggers do not fire where ``session_replication_role = replica`` (a logical-replication
subscriber, ``pg_restore --disable-triggers``): after loading the calendar that way, rebuild the
table (``TRUNCATE marketplace_listinghoursold`` and the INSERT ... SELECT at the end of ``CREATE``).

The single-column indexes Django gave the calendar's two foreign keys go too: the composite
indexes (listing, hour) and unique (node, hour) lead with the same columns.
"""
from django.db import migrations, models

TABLE = "marketplace_listinghoursold"

CREATE = f"""
CREATE TABLE {TABLE} (
    listing_id bigint NOT NULL,
    hour integer NOT NULL,
    free integer NOT NULL,
    PRIMARY KEY (listing_id, hour)
);
CREATE INDEX listinghoursold_full ON {TABLE} (listing_id, hour) WHERE free = 0;

CREATE FUNCTION marketplace_listinghoursold_insert() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    INSERT INTO {TABLE} (listing_id, hour, free)
    SELECT n.listing_id, n.hour, n.cards_offered - n.cards_sold FROM new_rows n WHERE n.cards_sold > 0;
    RETURN NULL;
END $$;

-- One pass over the changed rows, none over the old ones: a row's listing and hour never change
-- (listinghour_key_fixed below refuses it) and are unique, so the new rows alone say what to
-- delete, update or insert. EXECUTE plans it for each call: a plan PL/pgSQL kept from the
-- connection's first call (a round's 36,000 rows: hash join over the whole table) would be reused
-- for a 10-row sale.
CREATE FUNCTION marketplace_listinghoursold_update() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    EXECUTE $q$
    MERGE INTO {TABLE} s USING new_rows n ON s.listing_id = n.listing_id AND s.hour = n.hour
    WHEN MATCHED AND n.cards_sold = 0 THEN DELETE
    WHEN MATCHED AND s.free <> n.cards_offered - n.cards_sold THEN UPDATE SET free = n.cards_offered - n.cards_sold
    WHEN NOT MATCHED AND n.cards_sold > 0 THEN
        INSERT (listing_id, hour, free) VALUES (n.listing_id, n.hour, n.cards_offered - n.cards_sold)
    $q$;
    RETURN NULL;
END $$;

CREATE FUNCTION marketplace_listinghour_key_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = 'a listing-hour keeps its listing and hour',
        DETAIL = 'listing-hour ' || OLD.id;
END $$;

CREATE FUNCTION marketplace_listinghoursold_delete() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    EXECUTE $q$
    DELETE FROM {TABLE} s USING old_rows o
    WHERE s.listing_id = o.listing_id AND s.hour = o.hour AND o.cards_sold > 0
    $q$;
    RETURN NULL;
END $$;

CREATE FUNCTION marketplace_listinghoursold_truncate() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
BEGIN
    TRUNCATE {TABLE};
    RETURN NULL;
END $$;

CREATE TRIGGER listinghoursold_insert AFTER INSERT ON marketplace_listinghour
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION marketplace_listinghoursold_insert();
CREATE TRIGGER listinghoursold_update AFTER UPDATE ON marketplace_listinghour
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION marketplace_listinghoursold_update();
-- Fires only for an UPDATE that names listing_id or hour (the calendar's writes never do).
CREATE TRIGGER listinghour_key_fixed BEFORE UPDATE OF listing_id, hour ON marketplace_listinghour
    FOR EACH ROW WHEN (OLD.listing_id <> NEW.listing_id OR OLD.hour <> NEW.hour)
    EXECUTE FUNCTION marketplace_listinghour_key_fixed();
CREATE TRIGGER listinghoursold_delete AFTER DELETE ON marketplace_listinghour
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION marketplace_listinghoursold_delete();
CREATE TRIGGER listinghoursold_truncate AFTER TRUNCATE ON marketplace_listinghour
    FOR EACH STATEMENT EXECUTE FUNCTION marketplace_listinghoursold_truncate();

INSERT INTO {TABLE} (listing_id, hour, free)
SELECT listing_id, hour, cards_offered - cards_sold FROM marketplace_listinghour WHERE cards_sold > 0;
"""

DROP = f"""
DROP TRIGGER listinghoursold_insert ON marketplace_listinghour;
DROP TRIGGER listinghoursold_update ON marketplace_listinghour;
DROP TRIGGER listinghoursold_delete ON marketplace_listinghour;
DROP TRIGGER listinghoursold_truncate ON marketplace_listinghour;
DROP TRIGGER listinghour_key_fixed ON marketplace_listinghour;
DROP FUNCTION marketplace_listinghour_key_fixed();
DROP FUNCTION marketplace_listinghoursold_insert();
DROP FUNCTION marketplace_listinghoursold_update();
DROP FUNCTION marketplace_listinghoursold_delete();
DROP FUNCTION marketplace_listinghoursold_truncate();
DROP TABLE {TABLE};
"""


def sold_table_create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":  # quotes need PostgreSQL (arrays, triggers)
        schema_editor.execute(CREATE)


def sold_table_drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("marketplace", "0010_merge_0008_0009")]

    operations = [
        migrations.AddConstraint(
            model_name="listinghour",
            constraint=models.UniqueConstraint(fields=("listing", "hour"), name="listinghour_listing_hour_unique"),
        ),
        migrations.RemoveIndex(model_name="listinghour", name="listinghour_listing_hour"),
        migrations.RunPython(sold_table_create, sold_table_drop),
        migrations.RemoveIndex(model_name="listinghour", name="listinghour_sold"),
        migrations.RemoveIndex(model_name="listinghour", name="listinghour_full"),
        migrations.AlterField(
            model_name="listinghour", name="listing",
            field=models.ForeignKey(db_index=False, on_delete=models.deletion.CASCADE, related_name="hours",
                                    to="marketplace.listing"),
        ),
        migrations.AlterField(
            model_name="listinghour", name="node",
            field=models.ForeignKey(db_index=False, on_delete=models.deletion.PROTECT, related_name="+",
                                    to="marketplace.node"),
        ),
    ]
