"""The operators' dashboard: one server-rendered page for platform admins (staff), its charts as
PNG images drawn on the server, and the review decisions it posts. Thin views over selectors and
the lifecycle's review services."""
import io

from django.contrib import messages
from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils import timezone
from django.views.decorators.http import require_POST

from config.errors import ApplicationError
from gateway import selectors as gateway
from lifecycle import admin_services as lifecycle_admin
from marketplace.actors import admin_actor_for_request

from . import selectors


@staff_member_required
def dashboard(request):
    now = timezone.now()
    return render(request, "dashboard/index.html", {
        "depth": selectors.book_depth(now=now), "reviews": selectors.pending_reviews(),
        "failures": selectors.recent_failures(), "prices": selectors.clearing_prices(), "now": now,
        "gateway": gateway.gateway_figures(), "discrepancies": gateway.discrepancies_open()})


@staff_member_required
@require_POST
def review_decide(request, review_id: int, decision: str):
    done = {"approve": "approved", "reject": "rejected"}
    if decision not in done:
        return HttpResponse(status=404)
    try:
        # Needs matching.decide_review like the API: is_staff only opens the page.
        lifecycle_admin.review_decide(actor=admin_actor_for_request(request), review_id=review_id, decision=decision,
                                     reason=request.POST.get("reason", ""))
        messages.success(request, f"Match review {review_id} {done[decision]}.")
    except ApplicationError as exc:
        messages.error(request, f"Review {review_id}: {exc.message}")
    return redirect("dashboard:index")


@staff_member_required
def utilisation_chart(request):
    series = selectors.utilisation_by_hour(now=timezone.now())
    fig, ax = _figure()
    ax.plot([t for t, _ in series], [u * 100 for _, u in series], color="#2b6cb0")
    ax.axvline(timezone.now(), color="#a0aec0", linestyle="--", linewidth=1)
    ax.set(title="Listed card-hours sold, by hour (now dashed)", ylabel="%", ylim=(0, 100))
    fig.autofmt_xdate()
    return _png(fig)


@staff_member_required
def prices_chart(request):
    prices = selectors.clearing_prices()
    fig, ax = _figure()
    ax.barh([chip for chip, _, _ in prices], [float(p) for _, p, _ in prices], color="#38a169")
    ax.set(title="Average clearing price per card-hour (CNY)")
    return _png(fig)


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(8, 3.2))


def _png(fig) -> HttpResponse:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return HttpResponse(buffer.getvalue(), content_type="image/png")
