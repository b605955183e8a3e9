"""Stateful property test of the money model (README "Money").

Hypothesis drives top-ups, holds (place, post, void, expiry), token usage events (new, late,
slightly early, stale, duplicated, conflicting), settlement, refunds, payouts, invoices and
statements against a plain-Python model of every account, hold, event and charge. Each step
predicts its outcome from the model; a refused step (InsufficientFunds, Conflict,
ValidationFailed, exactly as predicted) must change nothing. After every step:

- the ledger balances: entries sum to zero per currency; PostgreSQL's deferred balance trigger
  passes (``SET CONSTRAINTS ALL IMMEDIATE``); each balance is the sum of its entries; no account
  without overdraft is negative;
- every account equals the model, and each buyer's wallet + held equals its top-ups + refunds +
  rounding credits - what it was charged;
- holds (posted <= amount; pending remainders are exactly the held balances), usage events
  (stored once per event id), charges (they agree with their transfers) and invoices (subtotal,
  fen total and rounding) agree with the model.

Adversaries (issue 9): an organisation that buys and sells orders its own capacity and its
related party's tokens (never matched, no money moves); the supplier's nodes fail under running
card-hour jobs (the buyer pays the whole hours delivered, and a credit capped at that comes out of
the supplier's payable, then its receivable, repaid from its next earnings). Invariants: the
platform's accounts never fund a credit, no allocation joins an organisation with itself or a
related party, and the books balance after every step.

Adversaries (issue 9): a supplier over-reporting (more than its endpoint can serve, more than
the buyer's max_spend) or reporting outside the allocation's live period, buyers disputing
charges and admins refunding or rejecting them, staff without the operation's permission, and a
large top-up waiting for a second admin. A refund after the supplier was paid out takes what its
payable no longer holds into its receivable: the buyer gets the refund whole either way. Their invariants: no token allocation costs more than
its max_spend, no buyer is charged more than the sum of its max_spend and other holds, metering's
running totals equal the stored events, disputes match the model and payouts leave what open
disputes withhold.

Two bugs it found are pinned by the regression tests at the end (the machine leaves those two
cases to them).
"""
from __future__ import annotations

from datetime import timedelta
from functools import partial
from decimal import ROUND_FLOOR, Decimal

import hypothesis
import pytest
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Count, Sum
from django.utils import timezone
from hypothesis import HealthCheck, Phase, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from audit.services import AdminActor
from billing import admin_services, disputes, invoicing, settlement, services
from billing.metering import UsageIn, usage_record_batch
from billing.models import (Account, Charge, Dispute, Entry, Hold, Invoice, InvoiceLine, TokenUsageTotal, Transfer,
                            UsageEvent)
from config.errors import Conflict, PermissionDenied, ValidationFailed
from lifecycle import services as lifecycle
from marketplace import services as market
from marketplace.hours import hour_start
from marketplace.models import Allocation, Organisation, RelatedParty
from matching import services as matching

from tests.factories import NodeFactory, OrganisationFactory, admin_user, make_listing
from tests.marketplace.helpers import tokens_body
from tests.matching.helpers import post_order

from .helpers import token_allocation

pytestmark = pytest.mark.django_db

SCALE = Decimal("0.000000000001")
FEN = Decimal("0.01")
ZERO = Decimal(0)
WALLET, HELD, PAYABLE = Account.Kind.BUYER_WALLET, Account.Kind.BUYER_HELD, Account.Kind.SUPPLIER_PAYABLE
RECEIVABLE = Account.Kind.SUPPLIER_RECEIVABLE
COMMISSION, ROUNDING, EXTERNAL = (Account.Kind.PLATFORM_COMMISSION, Account.Kind.PLATFORM_ROUNDING,
                                  Account.Kind.EXTERNAL)
# Buyer 0 starts with exactly its token allocation's 32.25 hold, so its wallet is empty.
SEED_FUNDS = (Decimal("32.25"), Decimal("50"))
# What each buyer agreed to: buyer 0 at most 60 CNY, live for two days; buyer 1 at most 1,000 CNY,
# live for eight days; endpoints serving a billion and a million tokens a minute.
AGREEMENTS = ({"max_spend": "60", "started_hours_ago": 48, "tokens_per_minute": 10**9},
              {"max_spend": "1000", "started_hours_ago": 8 * 24, "tokens_per_minute": 10**6})
TOKEN_KINDS = (Charge.Kind.INPUT_HIT, Charge.Kind.INPUT_MISS, Charge.Kind.OUTPUT)


def exact(x) -> Decimal:
    return Decimal(x).quantize(SCALE)


def floor_fen(x: Decimal) -> tuple[Decimal, Decimal]:
    paid = x.quantize(FEN, rounding=ROUND_FLOOR)
    return paid, x - paid


# Money with 1 to 12 decimals, up to 60 CNY.
money = st.integers(1, 12).flatmap(lambda p: st.integers(1, 60 * 10**p).map(lambda n: Decimal(n).scaleb(-p)))
# A part of ``total`` (0..1 of it), as a ratio drawn with at most 12 decimals.
ratio = st.sampled_from([ZERO, Decimal("0.5"), Decimal(1)]) | st.integers(1, 999_999).map(lambda n: Decimal(n) / 10**6)
one_in_five = st.integers(0, 4).map(lambda n: n == 0)
tokens = st.tuples(st.integers(0, 3_000_000), st.integers(0, 3_000_000), st.integers(0, 3_000_000))
# Accepted ages: just now, a few minutes early (within the 5-minute clock skew), hours or days late.
fresh_age = st.one_of(st.integers(0, 59).map(lambda m: timedelta(minutes=m)),
                      st.integers(-4, -1).map(lambda m: timedelta(minutes=m)),
                      st.integers(1, 23).map(lambda h: timedelta(hours=h)),
                      st.integers(1, 6).map(lambda d: timedelta(days=d, hours=22)))
# Refused: older than 7 days, or too far in the future.
stale_age = st.one_of(st.integers(1, 3 * 24 * 60).map(lambda m: timedelta(days=7, minutes=m)),
                      st.integers(10, 24 * 60).map(lambda m: -timedelta(minutes=m)))


def run_machine(client_for, *, examples: int, steps: int) -> None:
    class LedgerMachine(RuleBasedStateMachine):
        def __init__(self):
            super().__init__()
            self._atomic = transaction.atomic()  # a savepoint inside the test's transaction, rolled back in teardown
            # a test's block, as Django marks its TestCase's: each service call below is a money
            # transaction of its own (billing.services.accounts_lock checks lock order per call)
            self._atomic._from_testcase = True
            self._atomic.__enter__()
            try:
                self._set_up()
            except BaseException:
                self.teardown()
                raise

        def _set_up(self):
            self.serial = 0
            self.supplier_org = OrganisationFactory(is_supplier=True, is_buyer=False)
            self.supplier = self.supplier_org.pk
            self.buyers, self.allocations, self.prices = [], {}, {}
            self.clients = {}  # buyer -> its API client
            self.flows = {}  # buyer -> top-ups, refunds, rounding credits, service credits, charged
            self.bounds = {}  # allocation -> what the buyer agreed to, and what was accepted so far
            for seed, agreed in zip(SEED_FUNDS, AGREEMENTS):
                client = client_for(is_supplier=False, is_buyer=True, funds=0)
                buyer = client.organisation.pk
                self.clients[buyer] = client
                services.wallet_top_up(organisation_id=buyer, amount=seed, reference=f"seed:{buyer}")
                allocation = token_allocation(self.supplier_org, client, **agreed)
                self.bounds[allocation.pk] = {
                    "start": hour_start(allocation.start_hour), "end": hour_start(allocation.end_hour),
                    # the round may have matched the order to an endpoint listed earlier
                    "per_minute": allocation.parts.get().listing.tokens_per_minute,
                    "max_spend": Decimal(agreed["max_spend"]),
                    "amount": ZERO, "tokens": 0, "latest": None}
                self.buyers.append(buyer)
                self.allocations[buyer] = allocation.pk
                self.prices[allocation.pk] = (allocation.price_input_hit_per_m, allocation.price_input_miss_per_m,
                                              allocation.price_output_per_m)
                self.flows[buyer] = {"top_ups": seed, "refunds": ZERO, "rounding": ZERO, "credits": ZERO,
                                     "charged": ZERO}
            self.buyer_of = {a: b for b, a in self.allocations.items()}
            # The adversary: buys and sells (8 cards listed for a day at 5) and shares an owner with
            # the token supplier.
            self.dual = client_for(is_supplier=True, is_buyer=True, funds=1000)
            make_listing(NodeFactory(organisation=self.dual.organisation), ask="5")
            market.related_party_create(organisation_ids=(self.dual.organisation.pk, self.supplier),
                                        reason="same owner")
            self.credit_rate = Decimal(settings.SANDUISAN["SERVICE_CREDIT_RATE"])
            self.accounts = {(a.organisation_id, a.kind): a.balance for a in Account.objects.all()}
            self.holds = {h.pk: {"org": h.organisation_id, "amount": h.amount, "posted": h.posted_amount,
                                 "status": h.status, "expires_at": h.expires_at, "allocation": h.allocation_id,
                                 "reference": h.reference} for h in Hold.objects.all()}
            assert {h["allocation"] for h in self.holds.values()} == set(self.buyer_of)
            self.top_ups = {}  # reference -> (buyer, amount)
            self.events = {}  # event id -> payload, amount, settled (insertion order is id order)
            self.charges = {}  # charge id -> what the model knows of it
            self.last_charge = 0  # the highest charge id the model has seen
            self.refund_refs = {}  # reference -> (charge id, refund charge id)
            self.payout_refs = set()
            self.disputes = {}  # dispute id -> charge, amount, withheld, status
            self.resolver = None
            self.periods = {}  # (organisation, kind) -> last period end
            self.invoices = 0
            self.rate = settlement.commission_rate()
            # Buyer 1 has used some tokens already, so refunds and payouts have something to work on.
            allocation = self.allocations[self.buyers[1]]
            seed = UsageIn(self.fresh("event"), allocation, timezone.now() - timedelta(hours=1), 1_234_567, 2_345_678,
                           345_678)
            self.record([seed], [self.expect(seed, timedelta(hours=1))])
            settlement.allocation_settle(allocation_id=allocation)
            self.absorb_settlement_charges({allocation: self.settle_model(allocation)})

        def teardown(self):
            if self._atomic is not None:
                transaction.set_rollback(True)
                self._atomic.__exit__(None, None, None)
                self._atomic = None

        # --- model helpers -----------------------------------------------------------------

        def fresh(self, prefix: str) -> str:
            self.serial += 1
            return f"{prefix}-{self.serial}"

        def move(self, organisation, kind, amount) -> None:
            self.accounts[(organisation, kind)] = self.accounts.get((organisation, kind), ZERO) + amount

        def balance(self, organisation, kind) -> Decimal:
            return self.accounts.get((organisation, kind), ZERO)

        def refused(self, error, call) -> None:
            """``call`` must raise exactly ``error`` and change nothing."""
            before = fingerprint()
            with pytest.raises(error) as raised:
                call()
            assert raised.type is error, raised.value
            assert fingerprint() == before

        def release(self, hold) -> None:
            rest = hold["amount"] - hold["posted"]
            self.move(hold["org"], HELD, -rest)
            self.move(hold["org"], WALLET, rest)
            hold["status"] = Hold.Status.POSTED if hold["posted"] else Hold.Status.VOIDED

        def capture(self, buyer, from_hold, from_wallet, amount, fee, hold=None) -> None:
            """A charge: what the supplier owes (its receivable) is repaid from its share first."""
            repay = min(amount - fee, max(ZERO, -self.balance(self.supplier, RECEIVABLE)))
            self.move(buyer, HELD, -from_hold)
            self.move(buyer, WALLET, -from_wallet)
            self.move(self.supplier, PAYABLE, amount - fee - repay)
            self.move(self.supplier, RECEIVABLE, repay)
            self.move(None, COMMISSION, fee)
            self.flows[buyer]["charged"] += amount
            if hold is not None:
                hold["posted"] += from_hold

        def refunded(self, charge: dict, amount: Decimal, fee: Decimal, refund: Charge) -> None:
            """A refund of ``amount`` of ``charge`` was booked as ``refund``: the supplier and the
            platform give back their shares, the buyer's wallet gets it all. The supplier's share
            comes from its payable, and what that no longer holds becomes its receivable."""
            assert (refund.kind, refund.amount, refund.commission) == (Charge.Kind.REFUND, -amount, -fee)
            buyer = charge["buyer"]
            from_payable = min(amount - fee, max(ZERO, self.balance(self.supplier, PAYABLE)))
            self.move(self.supplier, PAYABLE, -from_payable)
            self.move(self.supplier, RECEIVABLE, -(amount - fee - from_payable))
            self.move(None, COMMISSION, -fee)
            self.move(buyer, WALLET, amount)
            self.flows[buyer]["refunds"] += amount
            charge["refunded"] += amount
            self.charges[refund.pk] = {"buyer": buyer, "kind": Charge.Kind.REFUND, "amount": -amount,
                                       "commission": -fee, "usage_to": refund.usage_to, "refunded": ZERO,
                                       "invoiced": False, "stated": False}
            self.last_charge = refund.pk

        def hold_of(self, allocation_id):
            return next(h for h in self.holds.values() if h["allocation"] == allocation_id)

        def settle_model(self, allocation_id) -> dict | None:
            """What settling the allocation's token usage charges: the oldest pending events the
            wallet and what is left on a pending hold cover."""
            buyer, hold = self.buyer_of[allocation_id], self.hold_of(allocation_id)
            pending = [e for e in self.events.values() if e["allocation"] == allocation_id and not e["settled"]]
            if not pending:
                return None
            on_hold = hold["amount"] - hold["posted"] if hold["status"] == Hold.Status.PENDING else ZERO
            funds, chosen, running = self.balance(buyer, WALLET) + on_hold, [], ZERO
            for event in pending:
                if running + event["amount"] > funds:
                    break
                chosen.append(event)
                running += event["amount"]
            if not chosen:
                return None
            prices = self.prices[allocation_id]
            parts = {}
            for kind, i in zip(TOKEN_KINDS, range(3)):
                count = sum(e["tokens"][i] for e in chosen)
                amount = exact(Decimal(count) * prices[i] / 1_000_000)
                if amount:
                    parts[kind] = (Decimal(count), prices[i], amount, exact(amount * self.rate))
            total = sum(e["amount"] for e in chosen)
            assert total == sum(p[2] for p in parts.values())
            taken = min(total, on_hold)
            self.capture(buyer, taken, total - taken, total, sum(p[3] for p in parts.values()), hold)
            for event in chosen:
                event["settled"] = True
            return {"parts": parts, "first": min(e["occurred_at"] for e in chosen),
                    "latest": max(e["occurred_at"] for e in chosen)}

        def absorb_settlement_charges(self, expected: dict) -> None:
            """The charges settlement created are exactly the model's, one per token kind."""
            new = list(Charge.objects.filter(pk__gt=self.last_charge).order_by("pk"))
            got = {}
            for charge in new:
                assert charge.kind in TOKEN_KINDS and charge.buyer_id == self.buyer_of[charge.allocation_id]
                got.setdefault(charge.allocation_id, {})[charge.kind] = (charge.quantity, charge.unit_price,
                                                                         charge.amount, charge.commission)
                outcome = expected.get(charge.allocation_id)
                assert outcome is not None, charge
                assert (charge.usage_from, charge.usage_to) == (outcome["first"], outcome["latest"])
                assert charge.supplier_id == self.supplier and charge.invoice_id is None
                self.charges[charge.pk] = {"buyer": charge.buyer_id, "kind": charge.kind, "amount": charge.amount,
                                           "commission": charge.commission, "usage_to": charge.usage_to,
                                           "refunded": ZERO, "invoiced": False, "stated": False}
            assert got == {a: o["parts"] for a, o in expected.items() if o is not None}
            if new:
                self.last_charge = new[-1].pk

        # --- top-ups -----------------------------------------------------------------------

        @rule(data=st.data())
        def top_up(self, data):
            """A new top-up, one reusing a reference (the same top-up is answered, another refused),
            or an earlier top-up delivered again."""
            buyer = self.buyers[data.draw(st.integers(0, 1), label="buyer")]
            amount = data.draw(money, label="amount")
            reference = data.draw(st.sampled_from([None, None, None, "r1", "r2", "replay"]), label="reference")
            if reference == "replay":
                if not self.top_ups:
                    return
                reference = data.draw(st.sampled_from(sorted(self.top_ups)), label="replayed")
                buyer, amount = self.top_ups[reference]
            reference = reference or self.fresh("top-up")
            known = self.top_ups.get(reference)
            call = partial(services.wallet_top_up, organisation_id=buyer, amount=amount, reference=reference)
            if known is not None and known != (buyer, amount):
                self.refused(Conflict, call)
            elif known is not None:
                before = fingerprint()
                call()
                assert fingerprint() == before
            else:
                call()
                self.top_ups[reference] = (buyer, amount)
                self.move(buyer, WALLET, amount)
                self.move(None, EXTERNAL, -amount)
                self.flows[buyer]["top_ups"] += amount

        # --- holds -------------------------------------------------------------------------

        @rule(data=st.data())
        def hold_place(self, data):
            """A hold of ``amount``, or of a ``share`` of what the wallet has, expiring soon or late;
            or one reusing a reference."""
            buyer = self.buyers[data.draw(st.integers(0, 1), label="buyer")]
            amount = data.draw(money, label="amount")
            share = data.draw(ratio | st.none(), label="share")
            expires_in = data.draw(st.sampled_from([timedelta(hours=1), timedelta(days=3), timedelta(minutes=-1),
                                                    timedelta(hours=-2)]), label="expires_in")
            reuse = data.draw(one_in_five, label="reuse")
            if share is not None and self.balance(buyer, WALLET) > 0:
                amount = max(exact(self.balance(buyer, WALLET) * share), SCALE)
            manual = [h for h in self.holds.values() if h["allocation"] is None]
            reference = manual[-1]["reference"] if reuse and manual else self.fresh("hold")
            call = partial(services.hold_place, organisation_id=buyer, amount=amount, reference=reference,
                           expires_at=timezone.now() + expires_in)
            if reuse and manual:
                before = fingerprint()
                assert call().reference == reference  # idempotent by reference: the original hold
                assert fingerprint() == before
            elif amount > self.balance(buyer, WALLET):
                self.refused(services.InsufficientFunds, call)
            else:
                hold = call()
                assert (hold.organisation_id, hold.amount, hold.status) == (buyer, amount, Hold.Status.PENDING)
                self.holds[hold.pk] = {"org": buyer, "amount": amount, "posted": ZERO, "status": Hold.Status.PENDING,
                                       "expires_at": hold.expires_at, "allocation": None, "reference": reference}
                self.move(buyer, WALLET, -amount)
                self.move(buyer, HELD, amount)

        @precondition(lambda self: any(h["allocation"] is None for h in self.holds.values()))
        @rule(data=st.data())
        def hold_close(self, data):
            """Post (part of, or more than) a hand-placed hold, or void it; mostly a pending one."""
            manual = sorted(pk for pk, h in self.holds.items() if h["allocation"] is None)
            pending = [pk for pk in manual if self.holds[pk]["status"] == Hold.Status.PENDING]
            pick_pending = pending and data.draw(st.integers(0, 3).map(bool), label="pick_pending")
            pk = data.draw(st.sampled_from(pending if pick_pending else manual), label="hold")
            void = data.draw(st.integers(0, 2).map(lambda n: n == 2), label="void")
            hold = self.holds[pk]
            if void:
                call = partial(services.hold_void, hold_id=pk)
                if hold["status"] == Hold.Status.POSTED:
                    self.refused(Conflict, call)
                    return
                result = call()
                if hold["status"] == Hold.Status.PENDING:
                    self.release(hold)
                assert result.status == hold["status"] == Hold.Status.VOIDED
                return
            left = hold["amount"] - hold["posted"]
            over = data.draw(one_in_five, label="over")
            amount = left + SCALE if over else exact(left * data.draw(ratio, label="part"))
            rate = data.draw(st.sampled_from([ZERO, Decimal("0.08"), Decimal("0.15"), Decimal("0.333333")]),
                             label="rate")
            call = partial(services.hold_post, hold_id=pk, amount=amount, supplier_id=self.supplier,
                           commission_rate=rate)
            if hold["status"] == Hold.Status.POSTED and hold["posted"] == amount:
                before = fingerprint()
                call()  # a retried settlement
                assert fingerprint() == before
            elif hold["status"] != Hold.Status.PENDING:
                self.refused(Conflict, call)
            elif over:
                self.refused(ValidationFailed, call)
            else:
                result = call()
                self.capture(hold["org"], amount, ZERO, amount, exact(amount * rate), hold)
                self.release(hold)
                hold["status"] = Hold.Status.POSTED  # posting nothing still posts
                assert (result.status, result.posted_amount) == (hold["status"], hold["posted"])

        @rule(later=st.sampled_from([timedelta(0), timedelta(0), timedelta(hours=2), timedelta(days=3)]))
        def holds_expire(self, later):
            now = timezone.now() + later
            due = sorted(pk for pk, h in self.holds.items()
                         if h["status"] == Hold.Status.PENDING and h["expires_at"] <= now)
            expected = {}
            for pk in due:
                hold = self.holds[pk]
                if hold["allocation"] is not None:  # settled first, then the rest released
                    expected[hold["allocation"]] = self.settle_model(hold["allocation"])
                self.release(hold)
            assert settlement.holds_expire(now=now) == len(due)
            self.absorb_settlement_charges(expected)

        # --- usage events --------------------------------------------------------------------

        def record(self, events: list[UsageIn], expected: list[str]) -> None:
            results = usage_record_batch(organisation_id=self.supplier, events=events)
            assert [r["status"] for r in results] == expected, results
            for event, result in zip(events, results):
                if result["status"] in ("created", "replayed"):
                    assert Decimal(result["amount"]) == self.events[event.event_id]["amount"]

        def expect(self, event: UsageIn, age: timedelta, now=None) -> str:
            """The model's answer to one event (applied), in a batch's order."""
            return self.judge(event, age, now)[0]

        def judge(self, event: UsageIn, age: timedelta, now=None) -> tuple[str, str | None]:
            """(status, code) the model expects for one event (applied): a stored id first, then
            the age, the allocation's live period, the endpoint's capacity and the max_spend."""
            known = self.events.get(event.event_id)
            if known is not None:
                return ("replayed", None) if known["event"] == event else ("conflict", "idempotency_conflict")
            if not timedelta(minutes=-4) <= age <= timedelta(days=6, hours=23):
                return "rejected", "out_of_period"
            bound = self.bounds[event.allocation_id]
            skew = timedelta(minutes=5)
            if not bound["start"] - skew <= event.occurred_at <= bound["end"] + skew:
                return "rejected", "out_of_period"
            if (now or timezone.now()) > bound["end"] + timedelta(hours=1):
                return "rejected", "out_of_period"
            prices = self.prices[event.allocation_id]
            counts = (event.input_hit_tokens, event.input_miss_tokens, event.output_tokens)
            latest = max(bound["latest"] or event.occurred_at, event.occurred_at)
            minutes = max(int((latest - bound["start"]).total_seconds()) // 60, 0) + 1
            if bound["tokens"] + sum(counts) > bound["per_minute"] * minutes:
                return "rejected", "implausible"
            amount = sum(exact(Decimal(n) * p / 1_000_000) for n, p in zip(counts, prices))
            if bound["amount"] + amount > bound["max_spend"]:
                return "rejected", "over_budget"
            bound["amount"] += amount
            bound["tokens"] += sum(counts)
            bound["latest"] = latest
            self.events[event.event_id] = {
                "event": event, "allocation": event.allocation_id, "occurred_at": event.occurred_at,
                "tokens": counts, "settled": False, "amount": amount}
            return "created", None

        @rule(batch=st.lists(st.tuples(st.integers(0, 1), tokens, fresh_age | stale_age, st.booleans()),
                             min_size=1, max_size=4))
        def usage_batch(self, batch):
            """New events, on time, late or stale; an item may repeat the previous one's id."""
            now = timezone.now()
            events, expected = [], []
            for b, counts, age, repeat in batch:
                if counts == (0, 0, 0):
                    counts = (0, 0, 1)  # zero-token events: see test_zero_token_event_*
                event_id = events[-1].event_id if repeat and events else self.fresh("event")
                event = UsageIn(event_id, self.allocations[self.buyers[b]], now - age, *counts)
                events.append(event)
                expected.append(self.expect(event, age))
            self.record(events, expected)

        @precondition(lambda self: self.events)
        @rule(data=st.data())
        def usage_redelivered(self, data):
            """A stored event delivered again: the same payload is answered, a different one refused."""
            known = self.events[data.draw(st.sampled_from(list(self.events)), label="event")]["event"]
            change = data.draw(st.sampled_from([None, "tokens", "time", "allocation"]), label="change")
            twice = data.draw(st.booleans(), label="twice")
            if change == "tokens":
                known = known._replace(output_tokens=known.output_tokens + 1)
            elif change == "time":
                known = known._replace(occurred_at=known.occurred_at - timedelta(seconds=1))
            elif change == "allocation":
                other = [a for a in self.buyer_of if a != known.allocation_id][0]
                known = known._replace(allocation_id=other)
            status = "replayed" if change is None else "conflict"
            before = fingerprint()
            self.record([known] * (2 if twice else 1), [status] * (2 if twice else 1))
            assert fingerprint() == before

        # --- settlement, refunds, payouts ----------------------------------------------------

        @rule(which=st.sampled_from([0, 1, "sweep"]))
        def settle(self, which):
            if which == "sweep":
                pending = sorted({e["allocation"] for e in self.events.values() if not e["settled"]})
                expected = {a: self.settle_model(a) for a in pending}
                settlement.settle_pending_usage()
            else:
                allocation = self.allocations[self.buyers[which]]
                expected = {allocation: self.settle_model(allocation)}
                settlement.allocation_settle(allocation_id=allocation)
            self.absorb_settlement_charges(expected)

        @precondition(lambda self: any(c["kind"] in TOKEN_KINDS for c in self.charges.values()))
        @rule(data=st.data())
        def refund(self, data):
            """Part or all of a charge back (or more than is left), by a new or a reused reference."""
            charges = sorted(k for k, c in self.charges.items() if c["kind"] in TOKEN_KINDS)
            pk = data.draw(st.sampled_from(charges), label="charge")
            charge = self.charges[pk]
            left = charge["amount"] - charge["refunded"]
            over = data.draw(one_in_five, label="over")
            amount = left + SCALE if over else max(exact(left * data.draw(ratio, label="part")), SCALE)
            reuse = data.draw(st.booleans(), label="reuse")
            # A reference is reused only for the same charge here; across charges it is a conflict,
            # see test_refund_reference_reused_*.
            used = sorted(r for r, (c, _) in self.refund_refs.items() if c == pk)
            reference = used[-1] if reuse and used else self.fresh("refund")
            call = partial(invoicing.charge_refund, charge_id=pk, amount=amount, reason="slow",
                           reference=reference)
            if reference in self.refund_refs:
                original = self.charges[self.refund_refs[reference][1]]
                if original["amount"] != -amount:  # the same reference for another amount: a conflict
                    self.refused(Conflict, call)
                    return
                before = fingerprint()
                assert call().pk == self.refund_refs[reference][1]  # the original refund
                assert fingerprint() == before
                return
            fee = exact(amount * charge["commission"] / charge["amount"])
            if amount > left:
                self.refused(ValidationFailed, call)
            elif self.balance(None, COMMISSION) < fee:
                self.refused(services.InsufficientFunds, call)  # the platform never overdraws its commission
            else:
                result = call()
                self.refunded(charge, amount, fee, result)
                self.refund_refs[reference] = (pk, result.pk)

        @rule(reuse=st.booleans())
        def payout(self, reuse):
            reference = sorted(self.payout_refs)[-1] if reuse and self.payout_refs else self.fresh("wire")
            call = partial(invoicing.payout_create, organisation_id=self.supplier, reference=reference)
            if reference in self.payout_refs:
                before = fingerprint()
                call()
                assert fingerprint() == before
                return
            owed = self.balance(self.supplier, PAYABLE) - self.withheld()
            paid, remainder = floor_fen(max(owed, ZERO))
            if paid <= 0:
                self.refused(Conflict, call)  # less than a fen owed beyond what open disputes withhold
                return
            call()
            self.payout_refs.add(reference)
            self.move(self.supplier, PAYABLE, -(paid + remainder))
            self.move(None, EXTERNAL, paid)
            self.move(None, ROUNDING, remainder)

        # --- adversaries: self-dealing and failures ------------------------------------------------

        @rule(kind=st.sampled_from(["card_hours", "tokens"]))
        def trade_with_itself(self, kind):
            """The organisation that buys and sells orders its own cards, or its related party's
            tokens, and a round runs: the pair is never matched and no money moves."""
            before = fingerprint()
            if kind == "card_hours":
                order_id = post_order(self.dual, max_price_per_card_hour="9").pk
                outcome = matching.round_run(bucket="*:*")
            else:
                response = self.dual.post("/api/v1/orders", tokens_body(), format="json")
                assert response.status_code == 201, response.content
                order_id = response.json()["id"]
                outcome = matching.round_run(bucket="tokens")
            assert outcome.matches == 0 and not Allocation.objects.filter(order_id=order_id).exists()
            assert fingerprint() == before

        @rule(data=st.data())
        def card_job_fails(self, data):
            """A buyer rents 1-2 cards for 3 hours; the supplier runs the job and the node fails
            ``minute`` minutes in. The buyer pays the whole hours before the failed one; its credit
            (SERVICE_CREDIT_RATE of the lost hours' value, at most what it paid) comes out of the
            supplier's payable, the rest into its receivable; the reopened order is then cancelled."""
            buyer = self.buyers[data.draw(st.integers(0, 1), label="buyer")]
            price = data.draw(st.sampled_from([Decimal("1.5"), Decimal("2"), Decimal("3.333333")]), label="price")
            cards = data.draw(st.integers(1, 2), label="cards")
            minute = data.draw(st.integers(0, 179), label="minute")
            node = NodeFactory(organisation=self.supplier_org, card_count=cards)
            listing = make_listing(node, hours=3, ask=str(price))
            first = listing.hours.order_by("hour").first().hour
            client = self.clients[buyer]
            order = post_order(client, cards=cards, duration_hours=3, window_hours=3, max_price_per_card_hour=str(price))
            held = exact(price * cards * 3)
            call = partial(lifecycle.slots_reserve, order_id=order.pk, claims=[market.SlotClaim(listing.pk, cards)],
                           start_hour=first, end_hour=first + 3, price_per_card_hour=price)
            if held > self.balance(buyer, WALLET):
                self.refused(services.InsufficientFunds, call)
                lifecycle.order_cancel(organisation=client.organisation, order_id=order.pk)
                market.listing_withdraw(organisation=self.supplier_org, listing_id=listing.pk)
                return
            allocation = call()
            row = Hold.objects.get(allocation=allocation)
            hold = self.holds[row.pk] = {"org": buyer, "amount": held, "posted": ZERO, "status": Hold.Status.PENDING,
                                         "expires_at": row.expires_at, "allocation": allocation.pk,
                                         "reference": row.reference}
            self.move(buyer, WALLET, -held)
            self.move(buyer, HELD, held)
            start = hour_start(first)
            lifecycle.allocation_start(organisation=self.supplier_org, allocation_id=allocation.pk, now=start)
            for beat in range(5, minute, 5):
                lifecycle.allocation_heartbeat(organisation=self.supplier_org, allocation_id=allocation.pk,
                                               now=start + timedelta(minutes=beat))
            lifecycle.node_fail(node_id=node.pk, organisation=self.supplier_org, now=start + timedelta(minutes=minute))
            # the model: whole hours before the failed one are charged, the rest of the hold returns
            hours = minute // 60
            paid = exact(price * cards * hours)
            fee = exact(paid * self.rate)
            if paid:
                self.capture(buyer, paid, ZERO, paid, fee, hold)
            self.release(hold)
            credit = min(exact(price * cards * (3 - hours) * self.credit_rate), paid)
            if credit:
                from_payable = min(credit, self.balance(self.supplier, PAYABLE))
                self.move(self.supplier, PAYABLE, -from_payable)
                self.move(self.supplier, RECEIVABLE, -(credit - from_payable))
                self.move(buyer, WALLET, credit)
                self.flows[buyer]["credits"] += credit
            new = list(Charge.objects.filter(pk__gt=self.last_charge).order_by("pk"))
            assert [(c.kind, c.amount, c.commission, c.supplier_id) for c in new] == (
                [(Charge.Kind.CARD_HOURS, paid, fee, self.supplier)] if paid else []) + (
                [(Charge.Kind.SERVICE_CREDIT, -credit, ZERO, self.supplier)] if credit else [])
            for charge in new:
                self.charges[charge.pk] = {"buyer": buyer, "kind": charge.kind, "amount": charge.amount,
                                           "commission": charge.commission, "usage_to": charge.usage_to,
                                           "refunded": ZERO, "invoiced": False, "stated": False}
                self.last_charge = charge.pk
            lifecycle.order_cancel(organisation=client.organisation, order_id=order.pk)  # no more rounds for it

        # --- invoices and statements -----------------------------------------------------------

        @rule(data=st.data())
        def invoice(self, data):
            """A buyer's invoice or the supplier's statement up to now, again for the same period,
            for an earlier one, or for the future."""
            who = data.draw(st.sampled_from([0, 1, "supplier"]), label="who")
            when = data.draw(st.sampled_from(["now", "now", "again", "earlier", "future"]), label="when")
            organisation = self.supplier if who == "supplier" else self.buyers[who]
            kind = Invoice.Kind.STATEMENT if who == "supplier" else Invoice.Kind.INVOICE
            last = self.periods.get((organisation, kind))
            now = timezone.now()
            period_end = {"now": now, "again": last, "earlier": last and last - timedelta(seconds=1),
                          "future": now + timedelta(hours=1)}[when] or now
            call = partial(invoicing.invoice_issue, organisation_id=organisation, kind=kind,
                           period_end=period_end, now=now)
            if period_end > now or (last is not None and period_end < last):
                self.refused(ValidationFailed, call)
                return
            if period_end == last:
                before = fingerprint()
                assert call().period_end == last  # the document already issued
                assert fingerprint() == before
                return
            flag = "stated" if kind == Invoice.Kind.STATEMENT else "invoiced"
            due = {pk: c for pk, c in self.charges.items() if not c[flag] and c["usage_to"] <= period_end
                   and (c["buyer"] == organisation or kind == Invoice.Kind.STATEMENT)}
            document = call()
            subtotal = sum((c["amount"] for c in due.values()), ZERO)
            fee = sum((c["commission"] for c in due.values()), ZERO)
            total, rounding = floor_fen(subtotal - fee if kind == Invoice.Kind.STATEMENT else subtotal)
            assert (document.subtotal, document.commission, document.total, document.rounding) == (
                subtotal, fee, total, rounding)
            field = "statement" if kind == Invoice.Kind.STATEMENT else "invoice"
            assert set(Charge.objects.filter(**{field: document}).values_list("pk", flat=True)) == set(due)
            late = sum((c["amount"] for c in due.values() if last is not None and c["usage_to"] <= last), ZERO)
            assert sum((line.amount for line in document.lines.filter(adjustment=True)), ZERO) == late
            for charge in due.values():
                charge[flag] = True
            self.periods[(organisation, kind)] = period_end
            self.invoices += 1
            if kind == Invoice.Kind.INVOICE and rounding:
                self.move(organisation, WALLET, rounding)
                self.move(None, ROUNDING, -rounding)
                self.flows[organisation]["rounding"] += rounding

        # --- adversaries (issue 9b): usage beyond the agreement, admins without permission -----

        def record_judged(self, event: UsageIn, age: timedelta, now=None) -> str | None:
            """Report one event; its status and code are exactly the model's."""
            before = fingerprint()
            status, code = self.judge(event, age, now)
            [result] = usage_record_batch(organisation_id=self.supplier, events=[event], now=now)
            assert (result["status"], result.get("code")) == (status, code), result
            if status != "created":
                assert fingerprint() == before
            return code

        @rule(b=st.integers(0, 1), kind=st.sampled_from(["tokens", "money"]))
        def supplier_over_reports(self, b, kind):
            """One event far beyond the agreement: more tokens than the endpoint could serve, or a
            bill beyond any max_spend here (issue 9: 115,625,000 output tokens on a 0.01 CNY hold)."""
            counts = (10**12, 0, 0) if kind == "tokens" else (0, 0, 200_000_000)  # 1,600 CNY of output
            event = UsageIn(self.fresh("greedy"), self.allocations[self.buyers[b]], timezone.now(), *counts)
            assert self.record_judged(event, timedelta(0)) in ("implausible", "over_budget")

        @rule(b=st.integers(0, 1), when=st.sampled_from(["before_start", "after_grace", "future"]))
        def supplier_reports_outside_period(self, b, when):
            """Usage from before the allocation began, reported after its late grace, or from the future."""
            allocation = self.allocations[self.buyers[b]]
            bound, now = self.bounds[allocation], timezone.now()
            if when == "before_start":
                at = bound["start"] - timedelta(minutes=6)
            elif when == "after_grace":
                at, now = bound["end"] - timedelta(minutes=1), bound["end"] + timedelta(minutes=61)
            else:
                at = now + timedelta(minutes=6)
            event = UsageIn(self.fresh("outside"), allocation, at, 1, 1, 1)
            assert self.record_judged(event, now - at, now=now) == "out_of_period" or (
                when == "before_start" and now - at > timedelta(days=6, hours=23))

        @rule(data=st.data())
        def admin_without_permission(self, data):
            """A staff user lacking the operation's permission (it may hold others) moves nothing."""
            held = data.draw(st.sampled_from([(), ("billing.pay_out",), ("matching.decide_review",),
                                              ("billing.top_up_wallet",)]), label="permissions")
            user = admin_user(self.fresh("staff"), *held)
            actor = AdminActor(user_id=user.pk)
            buyer = self.buyers[data.draw(st.integers(0, 1), label="buyer")]
            calls = [partial(admin_services.payout_by_admin, actor=actor, organisation_id=self.supplier,
                             reference=self.fresh("wire")),
                     partial(admin_services.wallet_top_up_by_admin, actor=actor, organisation_id=buyer,
                             amount=Decimal("100000000"), reference=self.fresh("gift"))]
            charges = sorted(k for k, c in self.charges.items() if c["kind"] in TOKEN_KINDS)
            if charges:
                calls.append(partial(admin_services.refund_by_admin, actor=actor, charge_id=charges[0],
                                     amount=SCALE, reason="none", reference=self.fresh("refund")))
            for call in calls:
                permission = {admin_services.payout_by_admin: "billing.pay_out",
                              admin_services.wallet_top_up_by_admin: "billing.top_up_wallet",
                              admin_services.refund_by_admin: "billing.refund_charge"}[call.func]
                if permission in held:
                    continue
                self.refused(PermissionDenied, call)

        @rule(b=st.integers(0, 1), same_admin=st.booleans())
        def large_top_up_waits_for_a_second_admin(self, b, same_admin):
            """Above the threshold a top-up is a request: nothing moves until a second finance
            admin approves; the requester approving it is refused."""
            buyer = self.buyers[b]
            first = admin_user(self.fresh("fin"), "billing.top_up_wallet")
            amount = admin_services.second_approval_threshold() + SCALE
            before = fingerprint()
            outcome = admin_services.wallet_top_up_by_admin(actor=AdminActor(user_id=first.pk), organisation_id=buyer,
                                                            amount=amount, reference=self.fresh("big"))
            assert outcome.transfer is None and outcome.approval.status == "pending"
            assert fingerprint() == before
            if same_admin:
                self.refused(PermissionDenied, partial(admin_services.money_approval_approve,
                                                       actor=AdminActor(user_id=first.pk),
                                                       approval_id=outcome.approval.pk))
                return
            second = admin_user(self.fresh("fin"), "billing.top_up_wallet")
            admin_services.money_approval_approve(actor=AdminActor(user_id=second.pk), approval_id=outcome.approval.pk)
            self.move(buyer, WALLET, amount)
            self.move(None, EXTERNAL, -amount)
            self.flows[buyer]["top_ups"] += amount

        def withheld(self) -> Decimal:
            return sum((d["withheld"] for d in self.disputes.values() if d["status"] == "open"), ZERO)

        @precondition(lambda self: any(c["kind"] in TOKEN_KINDS for c in self.charges.values()))
        @rule(data=st.data())
        def buyer_disputes(self, data):
            """The buyer disputes part or all of what is left of a charge (or more, or twice)."""
            pk = data.draw(st.sampled_from(sorted(k for k, c in self.charges.items() if c["kind"] in TOKEN_KINDS)),
                           label="charge")
            charge = self.charges[pk]
            left = charge["amount"] - charge["refunded"]
            over = data.draw(one_in_five, label="over")
            amount = left + SCALE if over else max(exact(left * data.draw(ratio, label="part")), SCALE)
            buyer = Organisation.objects.get(pk=charge["buyer"])
            call = partial(disputes.dispute_open, organisation=buyer, charge_id=pk, reason="empty answers",
                           amount=amount)
            if any(d["charge"] == pk and d["status"] == "open" for d in self.disputes.values()):
                self.refused(Conflict, call)
            elif amount > left:
                self.refused(ValidationFailed, call)
            else:
                dispute, created = call()
                assert created and dispute.status == "open"
                withheld = amount - exact(amount * charge["commission"] / charge["amount"])
                assert dispute.withheld == withheld
                self.disputes[dispute.pk] = {"charge": pk, "amount": amount, "withheld": withheld, "status": "open"}

        @precondition(lambda self: any(d["status"] == "open" for d in self.disputes.values()))
        @rule(data=st.data())
        def admin_resolves_dispute(self, data):
            """An admin refunds part or all of an open dispute, or rejects it; one without the
            permission changes nothing."""
            pk = data.draw(st.sampled_from(sorted(k for k, d in self.disputes.items() if d["status"] == "open")),
                           label="dispute")
            dispute = self.disputes[pk]
            if data.draw(one_in_five, label="unpermitted"):
                bare = admin_user(self.fresh("bare"), "billing.refund_charge", "billing.pay_out")
                self.refused(PermissionDenied, partial(disputes.dispute_resolve, actor=AdminActor(user_id=bare.pk),
                                                       dispute_id=pk, outcome="refund", reason="no"))
                return
            if self.resolver is None:
                self.resolver = admin_user(self.fresh("resolver"), "billing.resolve_dispute")
            actor = AdminActor(user_id=self.resolver.pk)
            if data.draw(st.booleans(), label="reject"):
                assert disputes.dispute_resolve(actor=actor, dispute_id=pk, outcome="reject",
                                                reason="posted price").status == "rejected"
                dispute["status"] = "rejected"
                return
            amount = max(exact(dispute["amount"] * data.draw(ratio, label="part")), SCALE)
            charge = self.charges[dispute["charge"]]
            fee = exact(amount * charge["commission"] / charge["amount"])
            call = partial(disputes.dispute_resolve, actor=actor, dispute_id=pk, outcome="refund", reason="partly",
                           amount=amount)
            if amount > charge["amount"] - charge["refunded"]:
                self.refused(ValidationFailed, call)  # refunded directly meanwhile
                return
            if self.balance(None, COMMISSION) < fee:
                self.refused(services.InsufficientFunds, call)  # the platform never overdraws its commission
                return
            result = call()
            assert (result.status, result.refunded) == ("refunded", amount)
            self.refunded(charge, amount, fee, result.refund)
            dispute["status"] = "refunded"

        @invariant()
        def disputes_match_model(self):
            assert {d.pk: (d.status, d.withheld) for d in Dispute.objects.all()} == {
                pk: (d["status"], d["withheld"]) for pk, d in self.disputes.items()}

        @invariant()
        def nobody_charged_beyond_the_agreement(self):
            """No token allocation costs more than its max_spend; no buyer is charged more than the
            sum of its max_spend and its other holds; metering's running totals are exact."""
            charged = dict(Charge.objects.filter(kind__in=TOKEN_KINDS).values_list("allocation_id")
                           .annotate(s=Sum("amount")))
            for allocation, bound in self.bounds.items():
                assert charged.get(allocation, ZERO) <= bound["max_spend"], allocation
                stored = UsageEvent.objects.filter(allocation_id=allocation).aggregate(s=Sum("amount"))["s"] or ZERO
                total = TokenUsageTotal.objects.filter(allocation_id=allocation).first()
                assert (total.amount if total else ZERO) == stored == bound["amount"]
            for buyer, flow in self.flows.items():
                agreed = sum((b["max_spend"] for a, b in self.bounds.items() if self.buyer_of[a] == buyer), ZERO)
                agreed += sum((h["amount"] for h in self.holds.values() if h["org"] == buyer and h["allocation"] is None),
                              ZERO)
                assert flow["charged"] <= agreed, buyer

        # --- invariants ----------------------------------------------------------------------

        @invariant()
        def books_balance(self):
            with connection.cursor() as cursor:  # PostgreSQL checks every transfer's balance now
                cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
                cursor.execute("SET CONSTRAINTS ALL DEFERRED")
            for row in Entry.objects.values("account__currency").annotate(s=Sum("amount")):
                assert row["s"] == 0, row
            sums = dict(Entry.objects.values_list("account_id").annotate(s=Sum("amount")))
            for account in Account.objects.all():
                assert account.balance == sums.get(account.pk, ZERO), account
                assert account.allow_negative == (account.kind in services.NEGATIVE_BY_NATURE), account
                assert account.allow_negative or account.balance >= 0, account

        @invariant()
        def accounts_match_model(self):
            actual = {(a.organisation_id, a.kind): a.balance for a in Account.objects.all()}
            for key in actual.keys() | self.accounts.keys():
                assert actual.get(key, ZERO) == self.accounts.get(key, ZERO), key
            for buyer, flow in self.flows.items():
                assert (actual.get((buyer, WALLET), ZERO) + actual.get((buyer, HELD), ZERO)
                        == flow["top_ups"] + flow["refunds"] + flow["rounding"] + flow["credits"] - flow["charged"]), buyer

        @invariant()
        def holds_match_model(self):
            held = {b: ZERO for b in self.buyers}
            balances = dict(Account.objects.filter(kind=HELD).values_list("organisation_id", "balance"))
            for hold in Hold.objects.all():
                model = self.holds[hold.pk]
                assert 0 <= hold.posted_amount <= hold.amount
                assert (hold.status, hold.amount, hold.posted_amount) == (model["status"], model["amount"],
                                                                          model["posted"]), hold.reference
                if hold.status == Hold.Status.PENDING:
                    held[hold.organisation_id] += hold.amount - hold.posted_amount
            assert len(self.holds) == Hold.objects.count()
            for buyer, amount in held.items():
                assert balances.get(buyer, ZERO) == amount, buyer

        @invariant()
        def the_platform_never_funds_a_credit(self):
            """Credits are paid from the failing supplier's payable or receivable only, and never
            exceed what the buyer paid for that allocation."""
            assert not Account.objects.filter(kind=Account.Kind.PLATFORM_CREDITS).exclude(balance=0).exists()
            assert not Entry.objects.filter(transfer__kind="service_credit", amount__lt=0).exclude(
                account__kind__in=(PAYABLE, RECEIVABLE)).exists()
            for credit in Charge.objects.filter(kind=Charge.Kind.SERVICE_CREDIT):
                paid = Charge.objects.filter(allocation_id=credit.allocation_id).exclude(
                    kind=Charge.Kind.SERVICE_CREDIT).aggregate(s=Sum("amount"))["s"] or ZERO
                assert 0 < -credit.amount <= paid
            assert not Account.objects.filter(kind=RECEIVABLE, balance__gt=0).exists()

        @invariant()
        def nobody_trades_with_itself_or_a_related_party(self):
            related = set(RelatedParty.objects.values_list("organisation_a_id", "organisation_b_id"))
            for buyer, supplier in Allocation.objects.values_list("order__organisation_id", "supplier_id"):
                assert buyer != supplier and (min(buyer, supplier), max(buyer, supplier)) not in related

        @invariant()
        def usage_events_match_model(self):
            rows = UsageEvent.objects.filter(organisation_id=self.supplier)
            assert not rows.values("event_id").annotate(n=Count("id")).filter(n__gt=1).exists()
            stored = {e: (a, s) for e, a, s in rows.values_list("event_id", "amount", "settled")}
            assert stored == {e: (m["amount"], m["settled"]) for e, m in self.events.items()}

        @invariant()
        def charges_agree_with_ledger(self):
            """Each transfer that books charges moves exactly their total out of (or, for refunds,
            into) the buyer's wallet and held accounts; refunds never exceed their charge."""
            assert set(Charge.objects.values_list("pk", flat=True)) == set(self.charges)
            booked = dict(Charge.objects.values_list("transfer_id").annotate(s=Sum("amount")))
            buyer_side = dict(Entry.objects.filter(transfer_id__in=booked, account__kind__in=services.BUYER_KINDS)
                              .values_list("transfer_id").annotate(s=Sum("amount")))
            for transfer_id, amount in booked.items():
                assert amount == -buyer_side.get(transfer_id, ZERO), Transfer.objects.get(pk=transfer_id).kind
            for charge in self.charges.values():
                assert 0 <= charge["refunded"] <= charge["amount"] or charge["kind"] in (Charge.Kind.REFUND,
                                                                                         Charge.Kind.SERVICE_CREDIT)

        @invariant()
        def invoices_add_up(self):
            assert Invoice.objects.count() == self.invoices
            lines = {i: (a, c) for i, a, c in InvoiceLine.objects.values_list("invoice_id").annotate(
                a=Sum("amount"), c=Sum("commission")).values_list("invoice_id", "a", "c")}
            for document in Invoice.objects.all():
                assert lines.get(document.pk, (ZERO, ZERO)) == (document.subtotal, document.commission), document
                due = document.subtotal - (document.commission if document.kind == Invoice.Kind.STATEMENT else 0)
                assert document.total + document.rounding == due and 0 <= document.rounding < FEN

    # Derandomized, so CI sees the same sequences every run. No shrinking: an example costs about half
    # a second, so shrinking a failure would run into pytest's 300 s timeout; the failing run's
    # steps (at most ``steps``) are printed as they are.
    run_state_machine_as_test(LedgerMachine, settings=hypothesis.settings(
        max_examples=examples, stateful_step_count=steps, deadline=None, derandomize=True, print_blob=False,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]))


def fingerprint() -> tuple:
    """Everything a refused or replayed call must leave as it was."""
    return (Transfer.objects.count(), Entry.objects.count(), Charge.objects.count(), Invoice.objects.count(),
            InvoiceLine.objects.count(), UsageEvent.objects.count(),
            tuple(Account.objects.order_by("pk").values_list("pk", "balance")),
            tuple(Hold.objects.order_by("pk").values_list("pk", "status", "amount", "posted_amount")))


def test_ledger_invariants_hold_under_any_sequence_of_money_events(client_for):
    run_machine(client_for, examples=30, steps=25)


# --- regressions for the two bugs the machine found -------------------------------------------------


def test_zero_token_event_does_not_block_settlement(client_for):
    supplier = OrganisationFactory(is_supplier=True, is_buyer=False)
    allocation = token_allocation(supplier, client_for(is_supplier=False, is_buyer=True, funds=100))
    [result] = usage_record_batch(organisation_id=supplier.pk,
                                  events=[UsageIn("idle", allocation.pk, timezone.now(), 0, 0, 0)])
    assert result["status"] == "created"
    settlement.settle_pending_usage()
    settlement.holds_expire(now=timezone.now() + timedelta(days=3))
    assert Hold.objects.get(allocation=allocation).status == Hold.Status.VOIDED


def test_refund_reference_reused_for_another_charge_moves_money_or_is_refused(client_for):
    supplier = OrganisationFactory(is_supplier=True, is_buyer=False)
    buyer = client_for(is_supplier=False, is_buyer=True, funds=100)
    allocation = token_allocation(supplier, buyer)
    usage_record_batch(organisation_id=supplier.pk,
                       events=[UsageIn("e", allocation.pk, timezone.now(), 1_000_000, 1_000_000, 0)])
    settlement.allocation_settle(allocation_id=allocation.pk)
    first, second = Charge.objects.filter(allocation=allocation).order_by("pk")  # 0.50 and 2.00, 8% commission
    invoicing.charge_refund(charge_id=first.pk, amount=Decimal("0.1"), reason="slow", reference="ticket-1")
    with pytest.raises(Conflict):
        invoicing.charge_refund(charge_id=second.pk, amount=Decimal("0.1"), reason="slow", reference="ticket-1")
    refunds = Charge.objects.filter(kind=Charge.Kind.REFUND)
    wallet = Account.objects.get(organisation=buyer.organisation, kind=WALLET)
    credited = wallet.entries.filter(transfer__kind="refund").aggregate(s=Sum("amount"))["s"]
    assert -sum(r.amount for r in refunds) == credited == Decimal("0.1")  # one refund, booked and paid
