"""An async view that enqueues through ``aenqueue``."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse

from tests.integration.apps.django_project.shop.tasks import add


async def create_sum(request: HttpRequest, a: int, b: int) -> JsonResponse:
    """Enqueue ``add(a, b)`` from an async view; answer with the result's id."""
    result = await add.aenqueue(a, b)
    return JsonResponse({"id": result.id, "status": str(result.status)}, status=202)
