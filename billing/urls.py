from django.urls import path

from . import apis, dispute_apis, settlement_apis

urlpatterns = [
    path("wallet", apis.WalletApi.as_view(), name="wallet"),
    path("admin/organisations/<int:organisation_id>/top-ups", apis.AdminTopUpApi.as_view(), name="admin-top-up"),
    path("admin/approvals", apis.MoneyApprovalListApi.as_view(), name="admin-approvals"),
    *[path(f"admin/approvals/<int:approval_id>/{decision}", apis.MoneyApprovalDecideApi.as_view(decision=decision),
           name=f"admin-approval-{decision}") for decision in ("approve", "reject")],
]
urlpatterns += [
    path("usage-events", apis.UsageEventApi.as_view(), name="usage-event"),
    path("usage-events/batch", apis.UsageEventBatchApi.as_view(), name="usage-event-batch"),
]
urlpatterns += [
    path("allocations/<int:allocation_id>/meter", settlement_apis.AllocationMeterApi.as_view(), name="allocation-meter"),
    *[path(f"allocations/<int:allocation_id>/{action}", settlement_apis.AllocationMeterActionApi.as_view(action=action),
           name=f"allocation-{action}") for action in settlement_apis.AllocationMeterActionApi.ACTIONS],
    path("charges", settlement_apis.ChargeListApi.as_view(), name="charges"),
    path("figures/supplier", settlement_apis.FiguresApi.as_view(side="supplier"), name="figures-supplier"),
    path("figures/buyer", settlement_apis.FiguresApi.as_view(side="buyer"), name="figures-buyer"),
    path("invoices", settlement_apis.InvoiceListIssueApi.as_view(), name="invoices"),
    path("invoices/<int:invoice_id>", settlement_apis.InvoiceDetailApi.as_view(), name="invoice-detail"),
    path("invoices/<int:invoice_id>/document", settlement_apis.InvoiceDocumentApi.as_view(), name="invoice-document"),
    path("admin/organisations/<int:organisation_id>/payouts", settlement_apis.AdminPayoutApi.as_view(),
         name="admin-payout"),
    path("admin/charges/<int:charge_id>/refund", settlement_apis.AdminRefundApi.as_view(), name="admin-refund"),
]
urlpatterns += [
    path("charges/<int:charge_id>/dispute", dispute_apis.ChargeDisputeApi.as_view(), name="charge-dispute"),
    path("disputes", dispute_apis.DisputeListApi.as_view(), name="disputes"),
    path("disputes/<int:dispute_id>", dispute_apis.DisputeDetailApi.as_view(), name="dispute-detail"),
    path("admin/disputes", dispute_apis.AdminDisputeListApi.as_view(), name="admin-disputes"),
    path("admin/disputes/<int:dispute_id>/resolve", dispute_apis.AdminDisputeResolveApi.as_view(),
         name="admin-dispute-resolve"),
]
