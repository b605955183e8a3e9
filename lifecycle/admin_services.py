"""Decisions platform admins take on allocations, behind their permissions and written to the audit
log: approving or rejecting a flagged match (``matching.decide_review``) and failing a node on its
supplier's behalf (``matching.fail_node``), and marking or unmarking related parties. The API, the admin site and the dashboard all call
these, so ``is_staff`` alone decides nothing anywhere."""
from __future__ import annotations

from django.db import transaction

from audit.services import AdminActor, audit_record, permission_require
from config.errors import NotFound, ValidationFailed
from marketplace import services as market
from marketplace.models import RelatedParty
from matching.models import MatchReview, NodeFailure

from . import services

DECISIONS = {"approve": services.review_approve, "reject": services.review_reject}


def review_decide(*, actor: AdminActor, review_id: int, decision: str, reason: str = "") -> MatchReview:
    """Approve or reject a flagged match (``lifecycle.services.review_approve`` / ``review_reject``)."""
    if decision not in DECISIONS:
        raise ValidationFailed.on("decision", "One of approve, reject.")
    permission_require(user_id=actor.user_id, permission="matching.decide_review")
    with transaction.atomic():
        review = DECISIONS[decision](review_id=review_id, admin_user_id=actor.user_id, reason=reason)
        audit_record(actor=actor, action=f"review.{decision}", target_type="match_review", target_id=review.pk,
                     reason=reason, details={"allocation": review.allocation_id})
        return review


def node_fail_by_admin(*, actor: AdminActor, node_id: int, reason: str = "") -> NodeFailure:
    """Mark a supplier's node failed on its behalf (``lifecycle.services.node_fail``)."""
    permission_require(user_id=actor.user_id, permission="matching.fail_node")
    with transaction.atomic():
        failure = services.node_fail(node_id=node_id, organisation=None, reason=reason, reported_by_id=actor.user_id)
        audit_record(actor=actor, action="node.fail", target_type="node", target_id=node_id, reason=reason,
                     details={"failure": failure.pk, "failed_hour": failure.failed_hour,
                              "allocations": list(failure.impacts.values_list("allocation_id", flat=True))})
        return failure


def related_party_mark_by_admin(*, actor: AdminActor, organisation_ids: tuple[int, int], reason: str) -> RelatedParty:
    """Bar two organisations from trading with each other (``marketplace.add_relatedparty``);
    idempotent: marking a pair again changes nothing but is still written to the audit log."""
    permission_require(user_id=actor.user_id, permission="marketplace.add_relatedparty")
    with transaction.atomic():
        party = market.related_party_create(organisation_ids=organisation_ids, reason=reason,
                                            created_by_id=actor.user_id)
        audit_record(actor=actor, action="related_party.mark", target_type="related_party", target_id=party.pk,
                     reason=reason, details={"organisations": [party.organisation_a_id, party.organisation_b_id]})
        return party


def related_party_unmark_by_admin(*, actor: AdminActor, party_id: int, reason: str = "") -> None:
    """Let two related organisations trade again (``marketplace.delete_relatedparty``)."""
    permission_require(user_id=actor.user_id, permission="marketplace.delete_relatedparty")
    with transaction.atomic():
        party = RelatedParty.objects.select_for_update().filter(pk=party_id).first()
        if party is None:
            raise NotFound("No such related-party mark.")
        audit_record(actor=actor, action="related_party.unmark", target_type="related_party", target_id=party.pk,
                     reason=reason, details={"organisations": [party.organisation_a_id, party.organisation_b_id]})
        party.delete()
