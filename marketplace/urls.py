from django.urls import path

from . import apis

urlpatterns = [
    path("me", apis.MeApi.as_view(), name="me"),
    path("api-keys", apis.ApiKeyListCreateApi.as_view(), name="api-keys"),
    path("api-keys/<int:key_id>/revoke", apis.ApiKeyRevokeApi.as_view(), name="api-key-revoke"),
    path("regions", apis.RegionListApi.as_view(), name="regions"),
    path("chips", apis.ChipListApi.as_view(), name="chips"),
    path("models", apis.AIModelListApi.as_view(), name="models"),
    path("nodes", apis.NodeListCreateApi.as_view(), name="nodes"),
    path("nodes/<int:node_id>", apis.NodeDetailApi.as_view(), name="node-detail"),
    path("listings", apis.ListingListCreateApi.as_view(), name="listings"),
    path("listings/<int:listing_id>", apis.ListingDetailApi.as_view(), name="listing-detail"),
    path("listings/<int:listing_id>/withdraw", apis.ListingWithdrawApi.as_view(), name="listing-withdraw"),
    path("orders", apis.OrderListCreateApi.as_view(), name="orders"),
    path("orders/<int:order_id>", apis.OrderDetailApi.as_view(), name="order-detail"),
    path("orders/<int:order_id>/cancel", apis.OrderCancelApi.as_view(), name="order-cancel"),
    path("allocations", apis.AllocationListApi.as_view(), name="allocations"),
    path("allocations/<int:allocation_id>", apis.AllocationDetailApi.as_view(), name="allocation-detail"),
    path("quotes", apis.QuoteApi.as_view(), name="quotes"),
]
