from django.urls import path

from . import views

app_name = "dashboard"
urlpatterns = [
    path("", views.dashboard, name="index"),
    path("reviews/<int:review_id>/<str:decision>", views.review_decide, name="review-decide"),
    path("charts/utilisation.png", views.utilisation_chart, name="chart-utilisation"),
    path("charts/prices.png", views.prices_chart, name="chart-prices"),
]
