"""The hash-chained event log."""

from fastapi import APIRouter

from broker.api import params
from broker.deps import AnyAgentDep, SessionsDep
from broker.schemas import LogEntryOut, LogPage
from broker.services import eventlog
from m2kt.constants import PAGE_LIMIT_MAX

router = APIRouter(prefix="/log", tags=["log"])


@router.get("")
def get_log(
    _: AnyAgentDep, sessions: SessionsDep, after: params.After = 0, limit: params.Limit = params.DEFAULT_LIMIT
) -> LogPage:
    items = [LogEntryOut(**e) for e in eventlog.page(sessions=sessions, after=after, limit=min(limit, PAGE_LIMIT_MAX))]
    return LogPage(items=items, next_after=items[-1].index if items else after)
