from django.urls import path

from . import apis

urlpatterns = [
    path("listings/<int:listing_id>/endpoint", apis.EndpointApi.as_view(), name="listing-endpoint"),
]
