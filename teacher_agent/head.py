"""The teacher's signed head (m2kt.head): what it published last on each topic, valid for a short time.

Students refuse a teacher whose last head expired, so a broker that freezes a teacher (stops
serving its new packets, or its new heads) is noticed within one head lifetime. The head is made
from the teacher's own record of what it published (``published.json`` and the envelopes beside
it), never from what the broker lists, so a broker cannot shrink it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from m2kt import keys
from m2kt.client import BrokerClient
from m2kt.errors import InvalidOption
from m2kt.head import TopicHead, build_head, sign_head
from m2kt.packet import open_packet
from teacher_agent.packetize import next_version

__all__ = ["latest_per_topic", "make_head", "put_head"]

logger = logging.getLogger(__name__)

PUBLISHED_FILE = "published.json"  # teacher_agent.pipeline.publish_topics writes it


def latest_per_topic(out_dir: Path, key_path: Path) -> dict[str, TopicHead]:
    """The highest-version packet per topic among those the teacher recorded as published."""
    record: dict[str, str] = json.loads((out_dir / PUBLISHED_FILE).read_text())
    public = keys.load_private(key_path).public_key()
    latest: dict[str, TopicHead] = {}
    for packet_id in sorted(set(record.values())):
        envelope = (out_dir / f"{packet_id}.envelope.json").read_bytes()
        payload = (out_dir / f"{packet_id}.payload.safetensors").read_bytes()
        manifest = open_packet(envelope, payload, {keys.keyid(public): public}).manifest
        if manifest.version is None:
            continue  # a packet from before versions: a head cannot name it
        for topic in manifest.topics:
            if topic not in latest or latest[topic].version < manifest.version:
                latest[topic] = TopicHead(manifest.version, packet_id)
    return latest


def make_head(
    name: str, key_path: Path, topics: dict[str, TopicHead], lifetime: timedelta, cosign: Sequence[Path] = ()
) -> bytes:
    """A signed head envelope for ``topics``, issued now, expiring ``lifetime`` later (co-signed by ``cosign``)."""
    if lifetime <= timedelta(0):
        raise InvalidOption(f"lifetime must be positive, not {lifetime}")
    now = datetime.now(UTC).replace(microsecond=0)
    statement = build_head(name, next_version(), topics, now, now + lifetime)
    return sign_head(statement, keys.load_private(key_path), *(keys.load_private(p) for p in cosign))


def put_head(
    out_dir: Path,
    key_path: Path,
    name: str,
    broker_url: str,
    token: str,
    lifetime: timedelta,
    cosign: Sequence[Path] = (),
) -> dict[str, Any]:
    """Sign a fresh head from what this teacher published and put it on the broker."""
    envelope = make_head(name, key_path, latest_per_topic(out_dir, key_path), lifetime, cosign)
    with BrokerClient(broker_url, token) as client:
        stored = client.put_head(name, envelope)
    logger.info("head %s put, expires %s", stored["version"], stored["expires"])
    return stored
