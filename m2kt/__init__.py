"""M2KT: model-to-model knowledge transmission.

The shared wire format (DSSE envelopes over in-toto statements, safetensors
payloads), its checks, and the broker client. Agents and the broker import these
names; the modules behind them are implementation detail.
"""

from m2kt.client import BrokerClient
from m2kt.dsse import Envelope, VerifiedStatement
from m2kt.errors import M2KTError
from m2kt.manifest import Manifest, validate_manifest
from m2kt.packet import BuiltPacket, OpenedPacket, build_packet, open_packet
from m2kt.statement import packet_id

__all__ = [
    "BrokerClient",
    "BuiltPacket",
    "Envelope",
    "M2KTError",
    "Manifest",
    "OpenedPacket",
    "VerifiedStatement",
    "build_packet",
    "open_packet",
    "packet_id",
    "validate_manifest",
]
