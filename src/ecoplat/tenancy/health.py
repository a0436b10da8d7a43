"""/api/health: is the database reachable and is its schema at the newest migration?"""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from ecoplat.errors import problem
from ecoplat.migrations_runner import is_current
from ecoplat.tenancy.schemas import HealthOut

router = APIRouter(tags=["health"])


@router.get("/api/health", response_model=HealthOut,
            responses={503: {"description": "Database unreachable or migrations not current",
                             "content": {"application/problem+json": {}}}})
def health(request: Request) -> JSONResponse | HealthOut:
    """For load balancers and orchestrators: 200 when this process can serve, 503 otherwise.
    It takes no session from the request's unit of work, so it answers even when the pool is sick."""
    database = request.app.state.db
    version = request.app.version
    try:
        with database.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as e:  # noqa: BLE001 - any failure to reach the database is "unreachable"
        return problem(503, f"The database is unreachable: {type(e).__name__}.", instance=request.url.path,
                       database="unreachable", migrations="unknown", version=version)
    try:
        current = is_current(database.url, database.engine)
    except Exception as e:  # noqa: BLE001
        return problem(503, f"Cannot read the migration state: {type(e).__name__}.", instance=request.url.path,
                       database="ok", migrations="unknown", version=version)
    if not current:
        return problem(503, "The database schema is not at the newest migration; run `ecoplat migrate`.",
                       instance=request.url.path, database="ok", migrations="behind", version=version)
    return HealthOut(status="ok", database="ok", migrations="current", version=version)
