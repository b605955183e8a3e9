from django.urls import path

from . import apis

urlpatterns = [
    path("wallet", apis.WalletApi.as_view(), name="wallet"),
    path("admin/organisations/<int:organisation_id>/top-ups", apis.AdminTopUpApi.as_view(), name="admin-top-up"),
]
urlpatterns += [
    path("usage-events", apis.UsageEventApi.as_view(), name="usage-event"),
    path("usage-events/batch", apis.UsageEventBatchApi.as_view(), name="usage-event-batch"),
]
