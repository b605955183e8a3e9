from django.contrib import admin
from django.http import JsonResponse
from django.urls import include, path, re_path
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from config.api.errors import json_404
from config.api.index import ApiIndexApi


def health(request):
    return JsonResponse({"status": "ok"})


api_v1 = [
    path("", include("marketplace.urls")),
    path("", include("matching.urls")),
    path("", include("billing.urls")),
    path("", include("gateway.urls")),
    path("schema", SpectacularAPIView.as_view(), name="schema"),
    path("docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("redoc", SpectacularRedocView.as_view(url_name="schema"), name="redoc"),
]
api_v1.insert(0, path("", ApiIndexApi.as_view(patterns=list(api_v1)), name="api-index"))

urlpatterns = [
    path("admin/", admin.site.urls),
    path("dashboard/", include("dashboard.urls")),
    path("health", health),
    path("api/v1/", include(api_v1)),
    # Unknown API paths answer in the API's error shape, not with an HTML page.
    # CSRF-exempt like every API view, so an unknown path answers 404 whatever the method and cookies.
    re_path(r"^api/", csrf_exempt(lambda request, *a, **k: json_404(request))),
]

handler404 = "config.api.errors.json_404"
handler500 = "config.api.errors.json_500"
