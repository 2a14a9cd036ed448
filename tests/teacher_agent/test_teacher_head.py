"""The teacher signs its head from its own record of what it published, and the broker serves it."""

import json
from datetime import timedelta

import factory
import pytest

from m2kt import keys
from m2kt.errors import UnknownKey
from m2kt.head import TopicHead, open_head
from teacher_agent.head import latest_per_topic, make_head, put_head


def _publish(broker, teacher, out_dir, specs):
    """Publish factory packets (seed, version, topics) and record them as publish_topics does."""
    record = {}
    with broker.client(teacher.token) as client:
        for seed, version, topics in specs:
            pid, env, payload = factory.packet(teacher.key, seed=seed, version=version, topics=topics)
            client.publish(env, payload)
            (out_dir / f"{pid}.envelope.json").write_bytes(env)
            (out_dir / f"{pid}.payload.safetensors").write_bytes(payload)
            record[f"slot-{seed}"] = pid
    (out_dir / "published.json").write_text(json.dumps(record))
    return list(record.values())


def test_the_head_names_the_latest_version_per_topic_and_the_broker_serves_it(broker, tmp_path):
    teacher = broker.teacher()
    key_path = tmp_path / "teacher.key"
    keys.save_keypair(teacher.key, key_path)
    out_dir = tmp_path / "packets"
    out_dir.mkdir()
    specs = [(1, 1, ["modarith.parity"]), (2, 2, ["modarith.parity", "modarith.range"]), (3, 3, ["modarith.range"])]
    ids = _publish(broker, teacher, out_dir, specs)
    latest = latest_per_topic(out_dir, key_path)
    assert latest == {"modarith.parity": TopicHead(2, ids[1]), "modarith.range": TopicHead(3, ids[2])}
    stored = put_head(out_dir, key_path, teacher.name, broker.url, teacher.token, timedelta(minutes=5))
    assert stored["stored"] is True
    _, student = broker.student()
    with broker.client(student) as client:
        head = open_head(client.get_head(teacher.name), {teacher.keyid: teacher.key.public_key()})
    assert head.teacher == teacher.name and head.version == stored["version"] and head.topics == latest
    assert timedelta(minutes=4) < head.expires - head.issued_at <= timedelta(minutes=5)
    again = put_head(out_dir, key_path, teacher.name, broker.url, teacher.token, timedelta(minutes=5))
    assert again["version"] > stored["version"]  # re-signed on a schedule: every head is newer


def test_a_head_needs_a_positive_lifetime(tmp_path):
    key_path = tmp_path / "teacher.key"
    keys.save_keypair(keys.generate(), key_path)
    with pytest.raises(ValueError, match="lifetime"):
        make_head("t", key_path, {}, timedelta(0))


def test_a_k_of_n_teacher_cosigns_its_head(broker, tmp_path):
    teacher = broker.teacher()
    second = keys.generate()
    key_path, second_path = tmp_path / "teacher.key", tmp_path / "second.key"
    keys.save_keypair(teacher.key, key_path)
    keys.save_keypair(second, second_path)
    with broker.admin as admin:
        admin.add_key(teacher.name, keys.public_to_b64(second.public_key()))
    out_dir = tmp_path / "packets"
    out_dir.mkdir()
    _publish(broker, teacher, out_dir, [(1, 1, ["modarith.parity"])])  # signed before the threshold rose
    with broker.http(broker.settings.admin_token.get_secret_value()) as http:
        assert http.put(f"/v1/agents/{teacher.name}/threshold", json={"threshold": 2}).status_code == 200
    with pytest.raises(UnknownKey, match="threshold is 2"):
        put_head(out_dir, key_path, teacher.name, broker.url, teacher.token, timedelta(minutes=5))
    stored = put_head(
        out_dir, key_path, teacher.name, broker.url, teacher.token, timedelta(minutes=5), cosign=[second_path]
    )
    assert stored["stored"] is True
    _, student = broker.student()
    trusted = {teacher.keyid: teacher.key.public_key(), keys.keyid(second.public_key()): second.public_key()}
    with broker.client(student) as client:
        head = open_head(client.get_head(teacher.name), trusted)
    assert sorted(head.signers) == sorted(trusted)
