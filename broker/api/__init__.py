"""The `/v1` router, assembled from one router per resource."""

from fastapi import APIRouter

from broker.api import agents, log, packets, reports, topics

router = APIRouter(prefix="/v1")
for module in (agents, packets, reports, topics, log):
    router.include_router(module.router)
