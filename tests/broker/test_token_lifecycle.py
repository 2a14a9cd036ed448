"""Token and key lifecycle: rotate and revoke an agent's token (API and CLI); what a revoked key means."""

import json
from datetime import UTC, datetime

import factory
from brokerkit import ADMIN_TOKEN
from test_publish import problem_type
from typer.testing import CliRunner

from broker.cli import app

runner = CliRunner()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def packet(teacher, seed: int = 0):
    created = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    tensors = factory.default_tensors(seed)
    manifest = factory.manifest(None, tensors, created_at=created)
    manifest["teacher"] = {**manifest["teacher"], "agent": teacher.name}
    payload = factory.safetensors_bytes(tensors)
    return factory.files(factory.envelope_bytes(factory.statement_bytes(payload, manifest), teacher.key), payload)


def test_rotating_a_token_refuses_the_old_one_at_once(broker):
    name, old = broker.student()
    with broker.http() as http:
        assert http.get(f"/v1/agents/{name}", headers=bearer(old)).status_code == 200
        r = http.post(f"/v1/agents/{name}/token", headers=bearer(old))
        assert (r.status_code, problem_type(r)) == (403, "forbidden")  # only the admin rotates
        r = http.post(f"/v1/agents/{name}/token", headers=bearer(ADMIN_TOKEN))
        assert r.status_code == 200, r.text
        new = r.json()["token"]
        assert r.json()["name"] == name and r.json()["role"] == "student" and new != old
        r = http.get(f"/v1/agents/{name}", headers=bearer(old))
        assert (r.status_code, problem_type(r)) == (401, "unauthorized")
        assert http.get(f"/v1/agents/{name}", headers=bearer(new)).status_code == 200
        r = http.post("/v1/agents/nobody/token", headers=bearer(ADMIN_TOKEN))
        assert (r.status_code, problem_type(r)) == (404, "not-found")


def test_revoking_a_token_refuses_it_until_a_new_one_is_issued(broker):
    teacher = broker.teacher()
    with broker.http() as http:
        r = http.delete(f"/v1/agents/{teacher.name}/token", headers=bearer(ADMIN_TOKEN))
        assert r.status_code == 200 and r.json() == {"name": teacher.name, "revoked": True}
        r = http.post("/v1/packets", files=packet(teacher), headers=bearer(teacher.token))
        assert (r.status_code, problem_type(r)) == (401, "unauthorized")
        assert http.get("/v1/topics").status_code == 401
        new = http.post(f"/v1/agents/{teacher.name}/token", headers=bearer(ADMIN_TOKEN)).json()["token"]
        assert http.post("/v1/packets", files=packet(teacher), headers=bearer(new)).status_code == 201


def test_a_teacher_whose_only_key_is_revoked_cannot_publish_and_its_packets_say_so(broker):
    teacher = broker.teacher()
    _student, student = broker.student()
    with broker.http() as http:
        r = http.post("/v1/packets", files=packet(teacher), headers=bearer(teacher.token))
        assert r.status_code == 201, r.text
        pid = r.json()["id"]
        assert http.get(f"/v1/packets/{pid}", headers=bearer(student)).json()["key_revoked"] is False
        r = http.post(f"/v1/agents/{teacher.name}/keys/{teacher.keyid}/revoke", headers=bearer(ADMIN_TOKEN))
        assert r.status_code == 200
        r = http.post("/v1/packets", files=packet(teacher, seed=1), headers=bearer(teacher.token))
        assert (r.status_code, problem_type(r)) == (403, "unknown-key")
        assert http.get("/v1/topics", headers=bearer(student)).json()[0]["packets"] == 1  # nothing stored
        assert http.get(f"/v1/packets/{pid}", headers=bearer(student)).json()["key_revoked"] is True
        page = http.get("/v1/topics/modarith.parity/packets", headers=bearer(student)).json()
        assert [(i["id"], i["key_revoked"]) for i in page["items"]] == [(pid, True)]
        assert http.get(f"/v1/packets/{pid}/provenance", headers=bearer(student)).json()["key"]["revoked"] is True
        headers = {**bearer(student), "Last-Event-ID": "0"}
        with http.stream("GET", "/v1/topics/modarith.parity/events", headers=headers) as stream:
            data = next(line for line in stream.iter_lines() if line.startswith("data: "))
        assert json.loads(data[6:])["key_revoked"] is True


def test_cli_rotates_and_revokes_tokens(broker):
    name, old = broker.student()
    env = {
        "M2KT_DATABASE_URL": broker.settings.database_url,
        "M2KT_DATA_DIR": str(broker.settings.data_dir),
        "M2KT_LOG_JSON": "false",
    }
    result = runner.invoke(app, ["agents", "rotate-token", "--name", name], env=env)
    assert result.exit_code == 0, result.output
    new = result.stdout.strip()
    assert new.startswith("m2kt_") and new != old
    with broker.http() as http:
        assert http.get(f"/v1/agents/{name}", headers=bearer(old)).status_code == 401
        assert http.get(f"/v1/agents/{name}", headers=bearer(new)).status_code == 200
        result = runner.invoke(app, ["agents", "revoke-token", "--name", name], env=env)
        assert result.exit_code == 0, result.output
        assert http.get(f"/v1/agents/{name}", headers=bearer(new)).status_code == 401
    missing = runner.invoke(app, ["agents", "rotate-token", "--name", "nobody"], env=env)
    assert missing.exit_code == 1 and "no agent" in missing.output and "Traceback" not in missing.output
