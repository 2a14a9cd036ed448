"""The database going away: /readyz says 503, routes answer a clean 503 problem, and the broker recovers."""

import factory
from brokerkit import Broker, ServerThread, broker_settings, pg_admin
from sqlalchemy.engine import make_url


def test_postgres_outage_gives_503_and_recovers(pg_database_url, tmp_path):
    name = make_url(pg_database_url).database
    settings = broker_settings(pg_database_url, tmp_path / "data")
    with ServerThread(settings) as server:
        b = Broker(server.url, settings, "postgresql")
        teacher = b.teacher()
        _, env, payload = factory.packet(teacher.key)
        with pg_admin() as conn:  # take the database away: refuse new connections, cut the open ones
            conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            conn.execute(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'")
        try:
            with b.http(teacher.token) as http:
                ready = http.get("/readyz")
                assert ready.status_code == 503 and ready.json()["type"].endswith("unavailable")
                r = http.post("/v1/packets", files=factory.files(env, payload))
                assert r.status_code == 503, r.text
                assert r.headers["content-type"].startswith("application/problem+json")
                assert http.get("/healthz").status_code == 200  # the process still serves
        finally:
            with pg_admin() as conn:
                conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
        with b.http(teacher.token) as http:
            assert http.get("/readyz").status_code == 200
            assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
        assert list((tmp_path / "data" / "tmp").iterdir()) == []
