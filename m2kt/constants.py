"""Protocol strings and limits of docs/protocol.md v1, defined once.

Every other module imports these names; no protocol literal is written twice.
"""

import re
from typing import Final

PAYLOAD_TYPE: Final = "application/vnd.in-toto+json"
STATEMENT_TYPE: Final = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE: Final = "https://m2kt.dev/knowledge-packet/v1"
HEAD_PREDICATE_TYPE: Final = "https://m2kt.dev/teacher-head/v1"  # m2kt.head: a teacher's signed head
PAYLOAD_NAME: Final = "payload.safetensors"
PACKET_FORMAT: Final = 1

PROBLEM_BASE: Final = "https://m2kt.dev/problems"
PROBLEM_MEDIA_TYPE: Final = "application/problem+json"
ENVELOPE_MEDIA_TYPE: Final = "application/vnd.dsse.envelope.v1+json"

TOPIC_PATTERN: Final = r"[a-z0-9]+(\.[a-z0-9_-]+)*"
TOPIC_RE: Final = re.compile(TOPIC_PATTERN)  # use fullmatch (`m2kt.manifest.is_topic` adds the length)
TOPIC_MAX_LEN: Final = 128
MAX_TOPICS: Final = 16
MAX_CONCEPTS: Final = 4096
PACKET_ID_PATTERN: Final = r"[0-9a-f]{64}"

DEFAULT_MAX_PAYLOAD_BYTES: Final = 64 * 1024 * 1024
# The envelope only carries the manifest; a 4096-concept manifest is well under this.
DEFAULT_MAX_ENVELOPE_BYTES: Final = 16 * 1024 * 1024
# safetensors headers above this are refused before they are parsed.
MAX_SAFETENSORS_HEADER_BYTES: Final = 16 * 1024 * 1024
# JSON nesting deeper than this is refused (statements and envelopes are shallow).
MAX_JSON_DEPTH: Final = 64

# Signatures per envelope: more are refused before any is verified (each costs a verification).
MAX_SIGNATURES: Final = 8
# Parents per manifest: provenance reads them all in one query, but the list itself is bounded.
MAX_PARENTS: Final = 256
MAX_VERSION: Final = 2**63 - 1  # a packet version fits a signed 64-bit column
MAX_TOPICS_PER_HEAD: Final = 4096  # topics one teacher's signed head may name
# Nesting of JSON request bodies (reports, agents, quarantine); statements allow MAX_JSON_DEPTH.
MAX_BODY_JSON_DEPTH: Final = 32

PAGE_LIMIT_DEFAULT: Final = 100
PAGE_LIMIT_MAX: Final = 500

# The agents' model directory (m2kt.ml.models save/load): architecture, read-out, task spec, weights digest.
MODEL_META_FILE: Final = "m2kt_model.json"
