from django.urls import path

from . import apis

urlpatterns = [
    path("orders/<int:order_id>/explain", apis.OrderExplainApi.as_view(), name="order-explain"),
    path("nodes/<int:node_id>/fail", apis.NodeFailApi.as_view(), name="node-fail"),
    path("admin/nodes/<int:node_id>/fail", apis.AdminNodeFailApi.as_view(), name="admin-node-fail"),
    path("admin/reviews", apis.ReviewListApi.as_view(), name="admin-reviews"),
    path("admin/reviews/<int:review_id>", apis.ReviewDetailApi.as_view(), name="admin-review-detail"),
    path("admin/reviews/<int:review_id>/approve", apis.ReviewApproveApi.as_view(), name="admin-review-approve"),
    path("admin/reviews/<int:review_id>/reject", apis.ReviewRejectApi.as_view(), name="admin-review-reject"),
    path("admin/rounds", apis.RoundListRunApi.as_view(), name="admin-rounds"),
]
