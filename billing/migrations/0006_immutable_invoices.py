"""PostgreSQL keeps issued invoices and statements immutable: their rows and lines refuse UPDATE
and DELETE, and a charge once placed on an invoice or statement cannot be moved or removed.
(``%%`` because the SQL passes through the driver's parameter formatting.)"""
from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION billing_refuse_change() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION '%% rows are immutable once issued', TG_TABLE_NAME USING ERRCODE = 'check_violation';
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER billing_invoice_immutable BEFORE UPDATE OR DELETE ON billing_invoice
    FOR EACH ROW EXECUTE FUNCTION billing_refuse_change();
CREATE TRIGGER billing_invoiceline_immutable BEFORE UPDATE OR DELETE ON billing_invoiceline
    FOR EACH ROW EXECUTE FUNCTION billing_refuse_change();

CREATE OR REPLACE FUNCTION billing_charge_invoiced_once() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.invoice_id IS NOT NULL OR OLD.statement_id IS NOT NULL THEN
            RAISE EXCEPTION 'an invoiced charge cannot be deleted' USING ERRCODE = 'check_violation';
        END IF;
        RETURN OLD;
    END IF;
    IF (OLD.invoice_id IS NOT NULL AND NEW.invoice_id IS DISTINCT FROM OLD.invoice_id)
       OR (OLD.statement_id IS NOT NULL AND NEW.statement_id IS DISTINCT FROM OLD.statement_id)
       OR NEW.amount <> OLD.amount OR NEW.commission <> OLD.commission THEN
        RAISE EXCEPTION 'a charge is invoiced once and never changed' USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER billing_charge_invoiced_once BEFORE UPDATE OR DELETE ON billing_charge
    FOR EACH ROW EXECUTE FUNCTION billing_charge_invoiced_once();
"""
DROP = """
DROP TRIGGER IF EXISTS billing_charge_invoiced_once ON billing_charge;
DROP TRIGGER IF EXISTS billing_invoiceline_immutable ON billing_invoiceline;
DROP TRIGGER IF EXISTS billing_invoice_immutable ON billing_invoice;
DROP FUNCTION IF EXISTS billing_charge_invoiced_once();
DROP FUNCTION IF EXISTS billing_refuse_change();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":  # the laptop default (SQLite) relies on the services
        schema_editor.execute(CREATE)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [("billing", "0005_settlement_invoices")]
    operations = [migrations.RunPython(forwards, backwards)]
