"""The project's URLs: the shop's views."""

from __future__ import annotations

from django.urls import path

from tests.integration.apps.django_project.shop import views

urlpatterns = [
    path("sums/<int:a>/<int:b>", views.create_sum),
]
