"""The hash-chained event log."""

from fastapi import APIRouter

from broker.api import params
from broker.deps import AnyAgentDep, SessionsDep
from broker.repositories import log as log_repo
from broker.schemas import LogEntryOut, LogPage
from broker.services import eventlog
from m2kt.constants import PAGE_LIMIT_MAX

router = APIRouter(prefix="/log", tags=["log"])


@router.get("")
def get_log(
    _: AnyAgentDep, sessions: SessionsDep, after: params.After = 0, limit: params.Limit = params.DEFAULT_LIMIT
) -> LogPage:
    with sessions.reader() as session:
        rows = log_repo.page(session=session, after=after, limit=min(limit, PAGE_LIMIT_MAX))
    items = [LogEntryOut(**eventlog.as_dict(e)) for e in rows]
    return LogPage(items=items, next_after=items[-1].index if items else after)
