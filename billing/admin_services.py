"""Money moved by platform admins: top-ups, payouts, refunds, and the second admin's approval.

Separation of duties: each operation needs its own permission (``billing.top_up_wallet``,
``billing.pay_out``, ``billing.refund_charge``), never ``is_staff`` alone. A top-up or refund
above ``SANDUISAN["SECOND_APPROVAL_ABOVE"]`` is only a request (``MoneyApproval``) until a
second admin, different from the requester and with the same permission, approves it. Every call
that changes something writes an audit entry in the same transaction.

References are the owner's: a top-up or payout reference is unique per organisation, a refund
reference per buyer (the transfer's idempotency id names the owner)."""
from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.services import AdminActor, audit_record, permission_require
from config.errors import Conflict, NotFound, PermissionDenied, ValidationFailed

from . import invoicing, services
from .models import Charge, Dispute, MoneyApproval, Transfer
from .rating import exact

PERMISSION = {MoneyApproval.Kind.TOP_UP: "billing.top_up_wallet", MoneyApproval.Kind.REFUND: "billing.refund_charge"}


def second_approval_threshold() -> Decimal:
    return Decimal(settings.SANDUISAN["SECOND_APPROVAL_ABOVE"])


@dataclass(frozen=True)
class MoneyOutcome:
    """Either the money moved (``transfer``, and for a refund its ``charge``) or it waits for a
    second admin (``approval``)."""
    transfer: Transfer | None = None
    charge: Charge | None = None
    approval: MoneyApproval | None = None


def top_up_reference(*, organisation_id: int, reference: str) -> str:
    return f"org{organisation_id}:{reference}"


def refund_reference(*, buyer_id: int, reference: str) -> str:
    return f"org{buyer_id}:{reference}"


def _transfer_id(*, kind: str, organisation_id: int, reference: str) -> str:
    """The ledger idempotency id the operation posts under: unique in the database, and naming
    the owner, so two organisations' equal references never meet."""
    prefix = "top-up" if kind == MoneyApproval.Kind.TOP_UP else "refund"
    return f"{prefix}:org{organisation_id}:{reference}"


def _reference_unused_by_approval(*, kind: str, organisation_id: int, reference: str) -> None:
    """A reference names one operation: one done at once cannot reuse a request's reference."""
    if MoneyApproval.objects.filter(kind=kind, organisation_id=organisation_id, reference=reference).exists():
        raise Conflict("This reference names a request waiting for (or decided by) a second admin.",
                       fields={"reference": ["Already used."]}, code="idempotency_conflict")


def _approval_request(*, actor: AdminActor, kind: str, organisation_id: int, amount: Decimal, reference: str,
                      reason: str, charge_id: int | None = None) -> MoneyApproval:
    """Create the request, or return the pending one this reference already names (same amount
    and charge; otherwise 409, as for a reference an operation done at once already used)."""
    if Transfer.objects.filter(idempotency_id=_transfer_id(kind=kind, organisation_id=organisation_id,
                                                           reference=reference)).exists():
        raise Conflict("This reference was already used.", fields={"reference": ["Already used."]},
                       code="idempotency_conflict")
    approval, created = MoneyApproval.objects.get_or_create(
        kind=kind, organisation_id=organisation_id, reference=reference,
        defaults={"amount": amount, "charge_id": charge_id, "reason": reason, "requested_by_id": actor.user_id})
    if not created:
        if approval.amount != amount or approval.charge_id != charge_id:
            raise Conflict("This reference was already used for a different request.",
                           fields={"reference": ["Already used."]}, code="idempotency_conflict")
        return approval
    audit_record(actor=actor, action=f"{kind}.request", target_type="money_approval", target_id=approval.pk,
                 reason=reason, details={"organisation": organisation_id, "amount": amount, "reference": reference,
                                         "charge": charge_id})
    return approval


def wallet_top_up_by_admin(*, actor: AdminActor, organisation_id: int, amount: Decimal, reference: str,
                           reason: str = "") -> MoneyOutcome:
    """Credit an organisation's wallet, or above the threshold request a second admin's approval.
    Idempotent by ``reference`` within the organisation."""
    permission_require(user_id=actor.user_id, permission=PERMISSION[MoneyApproval.Kind.TOP_UP])
    amount = exact(Decimal(amount))
    with transaction.atomic():
        if amount > second_approval_threshold():
            return MoneyOutcome(approval=_approval_request(
                actor=actor, kind=MoneyApproval.Kind.TOP_UP, organisation_id=organisation_id, amount=amount,
                reference=reference, reason=reason))
        _reference_unused_by_approval(kind=MoneyApproval.Kind.TOP_UP, organisation_id=organisation_id,
                                      reference=reference)
        transfer = services.wallet_top_up(organisation_id=organisation_id, amount=amount,
                                          reference=top_up_reference(organisation_id=organisation_id,
                                                                     reference=reference))
        audit_record(actor=actor, action="top_up.execute", target_type="organisation", target_id=organisation_id,
                     reason=reason, details={"amount": amount, "reference": reference, "transfer": transfer.pk})
        return MoneyOutcome(transfer=transfer)


def payout_by_admin(*, actor: AdminActor, organisation_id: int, reference: str) -> Transfer:
    """Pay a supplier what it is owed (``invoicing.payout_create``). Idempotent by ``reference``
    within the supplier: the same reference for another supplier is another payout."""
    permission_require(user_id=actor.user_id, permission="billing.pay_out")
    with transaction.atomic():
        transfer = invoicing.payout_create(organisation_id=organisation_id,
                                           reference=f"org{organisation_id}:{reference}")
        audit_record(actor=actor, action="payout.execute", target_type="organisation", target_id=organisation_id,
                     details={"reference": reference, "transfer": transfer.pk})
        return transfer


def _refund(*, charge: Charge, amount: Decimal, reason: str, reference: str) -> Charge:
    return invoicing.charge_refund(charge_id=charge.pk, amount=amount, reason=reason,
                                   reference=refund_reference(buyer_id=charge.buyer_id, reference=reference))


def refund_by_admin(*, actor: AdminActor, charge_id: int, amount: Decimal, reason: str,
                    reference: str) -> MoneyOutcome:
    """Refund part or all of a charge (``invoicing.charge_refund``), or above the threshold
    request a second admin's approval. Idempotent by ``reference`` within the buyer."""
    permission_require(user_id=actor.user_id, permission=PERMISSION[MoneyApproval.Kind.REFUND])
    amount = exact(Decimal(amount))
    charge = Charge.objects.filter(pk=charge_id).first()
    if charge is None:
        raise NotFound("No such refundable charge.")
    with transaction.atomic():
        if amount > second_approval_threshold():
            return MoneyOutcome(approval=_approval_request(
                actor=actor, kind=MoneyApproval.Kind.REFUND, organisation_id=charge.buyer_id, amount=amount,
                reference=reference, reason=reason, charge_id=charge.pk))
        _reference_unused_by_approval(kind=MoneyApproval.Kind.REFUND, organisation_id=charge.buyer_id,
                                      reference=reference)
        refund = _refund(charge=charge, amount=amount, reason=reason, reference=reference)
        audit_record(actor=actor, action="refund.execute", target_type="charge", target_id=charge.pk, reason=reason,
                     details={"amount": amount, "reference": reference, "refund": refund.pk})
        return MoneyOutcome(transfer=refund.transfer, charge=refund)


def _approval_locked(*, actor: AdminActor, approval_id: int) -> MoneyApproval:
    approval = MoneyApproval.objects.select_for_update().filter(pk=approval_id).first()
    if approval is None:
        raise NotFound("No such approval request.")
    permission_require(user_id=actor.user_id, permission=PERMISSION[approval.kind])
    if approval.requested_by_id == actor.user_id:
        raise PermissionDenied("A second admin, not the one who asked, must decide this request.",
                               code="second_admin_required")
    if approval.status != MoneyApproval.Status.PENDING:
        raise Conflict(f"The request is already {approval.status}.", code="invalid_transition")
    return approval


def money_approval_approve(*, actor: AdminActor, approval_id: int, reason: str = "") -> MoneyApproval:
    """A second admin approves: the top-up or refund happens now, in this transaction."""
    with transaction.atomic():
        approval = _approval_locked(actor=actor, approval_id=approval_id)
        if approval.kind == MoneyApproval.Kind.TOP_UP:
            approval.transfer = services.wallet_top_up(
                organisation_id=approval.organisation_id, amount=approval.amount,
                reference=top_up_reference(organisation_id=approval.organisation_id, reference=approval.reference))
        else:
            approval.transfer = _refund(charge=approval.charge, amount=approval.amount, reason=approval.reason,
                                        reference=approval.reference).transfer
        approval.status, approval.decided_by_id, approval.decided_at = (MoneyApproval.Status.APPROVED, actor.user_id,
                                                                        timezone.now())
        approval.decision_reason = reason
        approval.save()
        # A dispute whose refund waited for this approval is settled by it.
        Dispute.objects.filter(approval=approval, status=Dispute.Status.AWAITING_APPROVAL).update(
            status=Dispute.Status.REFUNDED, refunded=approval.amount, resolved_by_id=actor.user_id,
            resolved_at=approval.decided_at,
            refund=Charge.objects.filter(transfer_id=approval.transfer_id, kind=Charge.Kind.REFUND).first())
        audit_record(actor=actor, action=f"{approval.kind}.approve", target_type="money_approval",
                     target_id=approval.pk, reason=reason,
                     details={"organisation": approval.organisation_id, "amount": approval.amount,
                              "reference": approval.reference, "transfer": approval.transfer_id,
                              "requested_by": approval.requested_by_id})
        return approval


def money_approval_reject(*, actor: AdminActor, approval_id: int, reason: str) -> MoneyApproval:
    """A second admin refuses: nothing moves; the reference stays used."""
    if not reason.strip():
        raise ValidationFailed.on("reason", "Say why the request is rejected.")
    with transaction.atomic():
        approval = _approval_locked(actor=actor, approval_id=approval_id)
        approval.status, approval.decided_by_id, approval.decided_at = (MoneyApproval.Status.REJECTED, actor.user_id,
                                                                        timezone.now())
        approval.decision_reason = reason
        approval.save()
        # A dispute whose refund was refused is open again, for another decision.
        Dispute.objects.filter(approval=approval, status=Dispute.Status.AWAITING_APPROVAL).update(
            status=Dispute.Status.OPEN, approval=None)
        audit_record(actor=actor, action=f"{approval.kind}.reject", target_type="money_approval",
                     target_id=approval.pk, reason=reason, details={"amount": approval.amount})
        return approval
