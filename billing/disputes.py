"""Disputes: a buyer contests a charge; its supplier's share is withheld from payouts until a
platform admin with ``billing.resolve_dispute`` refunds it (in full or part) or rejects it.

Window: a charge may be disputed for ``SANDUISAN["DISPUTE_WINDOW_DAYS"]`` days after it was
booked. One dispute at a time per charge; a dispute covers at most what is left of the charge
after refunds. A refund above ``SECOND_APPROVAL_ABOVE`` waits for a second admin
(``awaiting_approval``, still withheld); approving it there settles the dispute.

Locks: the charge, then the supplier's payable account (so a payout, which locks the same
account before reading what is withheld, never pays a share a concurrent dispute withholds)."""
from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.utils import timezone

from audit.services import AdminActor, audit_record, permission_require
from config.errors import Conflict, NotFound, ValidationFailed
from marketplace.models import Organisation

from . import admin_services, invoicing
from .models import Account, Charge, Dispute, MoneyApproval
from .rating import exact
from .services import account_get_or_create, accounts_lock

NOT_DISPUTABLE = (Charge.Kind.REFUND, Charge.Kind.SERVICE_CREDIT)


def dispute_window() -> timedelta:
    return timedelta(days=int(settings.SANDUISAN["DISPUTE_WINDOW_DAYS"]))


def dispute_open(*, organisation: Organisation, charge_id: int, reason: str, reference: str | None = None,
                 amount: Decimal | None = None, now: datetime | None = None) -> tuple[Dispute, bool]:
    """The buyer of ``charge_id`` disputes ``amount`` of it (default: all that is left). Returns
    (dispute, created); the same ``reference`` again returns the first dispute. Another
    organisation's charge is NotFound."""
    now = now or timezone.now()
    reason = (reason or "").strip()
    if not reason:
        raise ValidationFailed.on("reason", "Say what is wrong with the charge.")
    with transaction.atomic():
        charge = Charge.objects.select_for_update().filter(pk=charge_id, buyer=organisation).first()
        if charge is None:
            raise NotFound("No such charge.")
        if reference:
            existing = Dispute.objects.filter(buyer=organisation, reference=reference).first()
            if existing is not None:
                if existing.charge_id != charge.pk or (amount is not None and existing.amount != exact(amount)):
                    raise Conflict("This reference names another dispute.", fields={"reference": ["Already used."]},
                                   code="idempotency_conflict")
                return existing, False
        if charge.kind in NOT_DISPUTABLE or charge.amount <= 0 or charge.supplier_id is None:
            raise Conflict("Only a charge for delivered service can be disputed.", code="not_disputable")
        if now > charge.created_at + dispute_window():
            raise Conflict(f"Charges can be disputed for {dispute_window().days} days after they are booked.",
                           code="dispute_window_closed")
        if Dispute.objects.filter(charge=charge, status__in=Dispute.WITHHOLDING).exists():
            raise Conflict("This charge is already disputed.", code="dispute_open")
        left = charge.amount - invoicing.charge_refunded(charge_id=charge.pk)
        amount = left if amount is None else exact(Decimal(amount))
        if not Decimal(0) < amount <= left:
            raise ValidationFailed.on("amount", f"Must be more than 0 and at most the {left} CNY left of the charge.")
        payable = account_get_or_create(organisation_id=charge.supplier_id, kind=Account.Kind.SUPPLIER_PAYABLE)
        accounts_lock(account_ids=[payable.pk])
        # The supplier's share, as a refund of this amount would take it back (charge_refund).
        fee = exact(amount * charge.commission / charge.amount)
        dispute = Dispute.objects.create(charge=charge, buyer=organisation, supplier_id=charge.supplier_id,
                                         reference=reference or uuid.uuid4().hex, amount=amount,
                                         withheld=amount - fee, reason=reason[:2000])
        return dispute, True


def dispute_list(*, organisation: Organisation) -> QuerySet[Dispute]:
    """Disputes the organisation raised (as buyer) or that concern its charges (as supplier)."""
    return (Dispute.objects.filter(buyer=organisation) | Dispute.objects.filter(supplier=organisation)).order_by("-id")


def dispute_get(*, organisation: Organisation, dispute_id: int) -> Dispute:
    dispute = dispute_list(organisation=organisation).filter(pk=dispute_id).first()
    if dispute is None:
        raise NotFound("No such dispute.")
    return dispute


def dispute_resolve(*, actor: AdminActor, dispute_id: int, outcome: str, reason: str,
                    amount: Decimal | None = None) -> Dispute:
    """An admin with ``billing.resolve_dispute`` refunds ``amount`` (default: all disputed; above
    the second-approval threshold it waits for a second admin) or rejects the dispute. Either way
    the withheld share is released for payouts once the dispute is closed."""
    if outcome not in ("refund", "reject"):
        raise ValidationFailed.on("outcome", "One of refund, reject.")
    if not (reason or "").strip():
        raise ValidationFailed.on("reason", "Say why.")
    permission_require(user_id=actor.user_id, permission="billing.resolve_dispute")
    with transaction.atomic():
        dispute = Dispute.objects.select_for_update().filter(pk=dispute_id).first()
        if dispute is None:
            raise NotFound("No such dispute.")
        if dispute.status != Dispute.Status.OPEN:
            raise Conflict(f"The dispute is {dispute.status}.", code="invalid_transition")
        now = timezone.now()
        if outcome == "reject":
            dispute.status = Dispute.Status.REJECTED
        else:
            amount = dispute.amount if amount is None else exact(Decimal(amount))
            if not Decimal(0) < amount <= dispute.amount:
                raise ValidationFailed.on("amount", f"Must be more than 0 and at most the disputed {dispute.amount}.")
            reference = f"dispute-{dispute.pk}"
            if amount > admin_services.second_approval_threshold():
                dispute.approval = MoneyApproval.objects.create(
                    kind=MoneyApproval.Kind.REFUND, organisation_id=dispute.buyer_id, charge_id=dispute.charge_id,
                    amount=amount, reference=reference, reason=reason[:250], requested_by_id=actor.user_id)
                dispute.status = Dispute.Status.AWAITING_APPROVAL
            else:
                dispute.refund = invoicing.charge_refund(
                    charge_id=dispute.charge_id, amount=amount, reason=reason,
                    reference=admin_services.refund_reference(buyer_id=dispute.buyer_id, reference=reference))
                dispute.status, dispute.refunded = Dispute.Status.REFUNDED, amount
        if dispute.status != Dispute.Status.AWAITING_APPROVAL:
            dispute.resolved_by_id, dispute.resolved_at = actor.user_id, now
        dispute.resolution_reason = reason[:2000]
        dispute.save()
        audit_record(actor=actor, action=f"dispute.{outcome}", target_type="dispute", target_id=dispute.pk,
                     reason=reason, details={"charge": dispute.charge_id, "disputed": dispute.amount,
                                             "refund": amount if outcome == "refund" else None,
                                             "status": dispute.status, "approval": dispute.approval_id})
        return dispute
