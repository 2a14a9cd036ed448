"""k-of-n teachers: the registry records how many of a teacher's keys must sign, and the broker holds to it."""

import base64
import json

import factory
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_heads import TOPIC, _head
from test_publish import problem_type
from typer.testing import CliRunner

from broker.cli import app
from m2kt import keys
from m2kt.head import TopicHead


def _cosigned(key, second, seed: int, version: int) -> tuple[str, bytes, bytes, bytes]:
    """(packet id, envelope by key alone, envelope by both, payload)."""
    pid, env, payload = factory.packet(key, seed=seed, version=version)
    statement = base64.b64decode(json.loads(env)["payload"])
    return pid, env, factory.envelope_bytes(statement, key, second), payload


def test_a_threshold_of_two_needs_two_of_the_teachers_keys_on_packets_and_heads(broker):
    teacher = broker.teacher()
    second = Ed25519PrivateKey.generate()
    path = f"/v1/agents/{teacher.name}/threshold"
    with broker.http(broker.settings.admin_token.get_secret_value()) as admin:
        refused = admin.put(path, json={"threshold": 2})
        assert refused.status_code == 409 and problem_type(refused) == "conflict"  # it has one key
        assert (
            admin.post(
                f"/v1/agents/{teacher.name}/keys", json={"public_key": keys.public_to_b64(second.public_key())}
            ).status_code
            == 201
        )
        set_two = admin.put(path, json={"threshold": 2})
        assert set_two.status_code == 200 and set_two.json()["threshold"] == 2
        assert admin.get(f"/v1/agents/{teacher.name}").json()["threshold"] == 2
        assert admin.get(f"/v1/agents/{teacher.name}/trust").json()["threshold"] == 2
    pid, alone, both, payload = _cosigned(teacher.key, second, 1, 1)
    with broker.http(teacher.token) as http:
        r = http.post("/v1/packets", files=factory.files(alone, payload))
        assert r.status_code == 403 and problem_type(r) == "unknown-key" and "threshold is 2" in r.text
        assert http.post("/v1/packets", files=factory.files(both, payload)).status_code == 201
        head = _head(teacher.key, teacher.name, 1, {TOPIC: TopicHead(1, pid)})
        r = http.put(f"/v1/agents/{teacher.name}/head", json=head)
        assert r.status_code == 403 and problem_type(r) == "unknown-key"
        statement = base64.b64decode(head["payload"])
        cosigned = json.loads(factory.envelope_bytes(statement, teacher.key, second))
        assert http.put(f"/v1/agents/{teacher.name}/head", json=cosigned).status_code == 201
    with broker.admin as admin:
        kinds = [(e["kind"], e["subject"]) for e in admin.iter_log()]
    assert ("agent.threshold", teacher.name) in kinds


def test_bad_thresholds_are_problems(broker):
    teacher = broker.teacher()
    student, token = broker.student()
    with broker.http(broker.settings.admin_token.get_secret_value()) as admin:
        for bad in ({"threshold": 0}, {"threshold": 17}, {"threshold": "2"}, {}):
            r = admin.put(f"/v1/agents/{teacher.name}/threshold", json=bad)
            assert r.status_code == 422 and problem_type(r) == "invalid-request", bad
        assert problem_type(admin.put("/v1/agents/nobody/threshold", json={"threshold": 1})) == "not-found"
        r = admin.put(f"/v1/agents/{student}/threshold", json={"threshold": 1})
        assert r.status_code == 422 and problem_type(r) == "invalid-request"
    for who in (teacher.token, token):
        with broker.http(who) as http:
            assert http.put(f"/v1/agents/{teacher.name}/threshold", json={"threshold": 1}).status_code == 403


def test_the_cli_sets_a_threshold(broker, tmp_path):
    env = {
        "M2KT_DATABASE_URL": broker.settings.database_url,
        "M2KT_DATA_DIR": str(tmp_path / "data"),
        "M2KT_LOG_JSON": "false",
    }
    teacher = broker.teacher()
    runner = CliRunner()
    refused = runner.invoke(app, ["keys", "threshold", "--name", teacher.name, "--k", "2"], env=env)
    assert refused.exit_code == 1 and "1 unrevoked keys" in refused.output and "Traceback" not in refused.output
    assert runner.invoke(app, ["keys", "threshold", "--name", teacher.name, "--k", "1"], env=env).exit_code == 0
