"""An allocation's supplier checked once per statement instead of once per row.

``allocation.supplier_id`` repeats what the allocation's parts say: the organisation whose
listings were sold. Its foreign key ran one deferred check per row at commit, and a round that
writes 18,000 allocations ran 18,000 of them (with the hold's in billing 0012, about 0.14 s of
the end-to-end bench's 2 s). Triggers now give the same guarantee with one statement each:

- after an INSERT, the suppliers of the new rows exist and are locked ``FOR KEY SHARE``, in id
  order, until the transaction ends (the lock a key check takes), so a concurrent delete waits
  and then fails; one that is missing, or was deleted meanwhile, refuses the INSERT;
- an organisation that supplied an allocation cannot be deleted (after a DELETE, on its rows).
  The check must see allocations committed after the deleting transaction began, as a key check
  does: under READ COMMITTED each statement of the trigger takes a new snapshot, and a delete
  waits for the key locks of inserts in flight; REPEATABLE READ and SERIALIZABLE would keep the
  transaction's first snapshot, so organisations are deleted under READ COMMITTED only (the
  trigger refuses otherwise; the app never deletes them, and Django runs READ COMMITTED);
- an allocation keeps its order and supplier, and an organisation its id, so no UPDATE can undo
  what the INSERT checked.

The two trigger functions take the column (and the referencing table) as arguments: billing
0012 checks a hold's organisation with the same ones. Django keeps ``on_delete=PROTECT`` for the ORM (``db_constraint=False`` drops only the SQL key).
The checks are immediate, not deferred to commit: an allocation cannot name an organisation
inserted later in the same transaction. A TRUNCATE of organisations always takes the allocations with it (the keys from orders to
organisations and from allocations to orders require it). The queries over transition tables run
through EXECUTE, planned for each call: 18,000 rows and one want different plans. Like every
trigger, these do not fire under ``session_replication_role = replica``.
"""
from django.db import migrations, models

CREATE = """
CREATE FUNCTION sanduisan_column_fixed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'check_violation', MESSAGE = TG_ARGV[0], DETAIL = TG_TABLE_NAME || ' ' || OLD.id;
END $$;

-- After an INSERT: the organisations the new rows name in column TG_ARGV[0] exist, locked FOR
-- KEY SHARE in id order until the transaction ends (the lock a key check takes). One missing, or
-- deleted meanwhile (READ COMMITTED skips it), leaves the count short: TG_ARGV[1] says what failed.
CREATE FUNCTION sanduisan_organisations_exist() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    named text := 'n.' || quote_ident(TG_ARGV[0]);
    missing bigint;
BEGIN
    EXECUTE 'SELECT (SELECT count(DISTINCT ' || named || ') FROM new_rows n) - (SELECT count(*) FROM ('
        ' SELECT 1 FROM marketplace_organisation g WHERE g.id IN (SELECT ' || named || ' FROM new_rows n)'
        ' ORDER BY g.id FOR KEY SHARE OF g) AS locked)' INTO missing;
    IF missing > 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', MESSAGE = TG_ARGV[1];
    END IF;
    RETURN NULL;
END $$;

-- After a DELETE of organisations: none is still named by column TG_ARGV[1] of table TG_ARGV[0]
-- (TG_ARGV[2] says what failed).
CREATE FUNCTION sanduisan_organisations_kept() RETURNS trigger LANGUAGE plpgsql
SET search_path FROM CURRENT AS $$
DECLARE
    kept bigint;
BEGIN
    -- A foreign key looks for referencing rows with a snapshot newer than the transaction's; a
    -- trigger cannot. Under READ COMMITTED each statement here takes a new snapshot (and a delete
    -- waits for the key locks of inserts in flight), so it sees every committed row; under
    -- REPEATABLE READ or SERIALIZABLE it would miss rows committed after the transaction began.
    IF current_setting('transaction_isolation') <> 'read committed' AND EXISTS (SELECT 1 FROM old_rows) THEN
        RAISE EXCEPTION USING ERRCODE = 'object_not_in_prerequisite_state',
            MESSAGE = 'organisations are deleted under READ COMMITTED only',
            HINT = 'the check that nothing still names them must see every committed row';
    END IF;
    EXECUTE 'SELECT o.id FROM old_rows o WHERE EXISTS (SELECT 1 FROM ' || quote_ident(TG_ARGV[0])
        || ' r WHERE r.' || quote_ident(TG_ARGV[1]) || ' = o.id) LIMIT 1' INTO kept;
    IF kept IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'foreign_key_violation', MESSAGE = TG_ARGV[2],
            DETAIL = 'organisation ' || kept;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER allocation_supplier_check AFTER INSERT ON marketplace_allocation
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION sanduisan_organisations_exist('supplier_id',
                                                   'an allocation''s supplier must be an existing organisation');
CREATE TRIGGER organisation_supplier_kept AFTER DELETE ON marketplace_organisation
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT
    EXECUTE FUNCTION sanduisan_organisations_kept('marketplace_allocation', 'supplier_id',
                                                  'an organisation that supplied allocations cannot be deleted');

-- Fire only for an UPDATE that names these columns, and raise only if one changes.
CREATE TRIGGER allocation_owner_fixed BEFORE UPDATE OF order_id, supplier_id ON marketplace_allocation
    FOR EACH ROW WHEN (OLD.order_id <> NEW.order_id OR OLD.supplier_id <> NEW.supplier_id)
    EXECUTE FUNCTION sanduisan_column_fixed('an allocation keeps its order and supplier');
CREATE TRIGGER organisation_id_fixed BEFORE UPDATE OF id ON marketplace_organisation
    FOR EACH ROW WHEN (OLD.id <> NEW.id)
    EXECUTE FUNCTION sanduisan_column_fixed('an organisation keeps its id');
"""

DROP = """
DROP TRIGGER allocation_supplier_check ON marketplace_allocation;
DROP TRIGGER organisation_supplier_kept ON marketplace_organisation;
DROP TRIGGER allocation_owner_fixed ON marketplace_allocation;
DROP TRIGGER organisation_id_fixed ON marketplace_organisation;
DROP FUNCTION sanduisan_organisations_exist();
DROP FUNCTION sanduisan_organisations_kept();
DROP FUNCTION sanduisan_column_fixed();
"""


def checks_create(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE)


def checks_drop(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("marketplace", "0012_allocation_lean_indexes")]

    operations = [
        # The checks first: on the way back the key is restored before they go.
        migrations.RunPython(checks_create, checks_drop),
        migrations.AlterField(
            model_name="allocation", name="supplier",
            field=models.ForeignKey(db_constraint=False, on_delete=models.deletion.PROTECT,
                                    related_name="supplied_allocations", to="marketplace.organisation"),
        ),
    ]
