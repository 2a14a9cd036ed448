"""Fuzzing the API with schemathesis, from the broker's own OpenAPI schema, with a token of each role.

Every generated request must get a documented status with a documented content type and a body
that matches its schema, and never a 5xx. The check that schema-valid data is *accepted* is left
out: the schema cannot express the protocol's semantic checks (a random envelope is
schema-valid multipart and correctly refused with 422).

CI runs a short pass (``M2KT_FUZZ_EXAMPLES``, default 3 per operation and role, on both
databases). The long pass: ``M2KT_FUZZ_EXAMPLES=125 .venv/bin/python -m pytest tests/broker/test_fuzz.py -k sqlite -rA``
(20 operations x 3 roles x 100 = 6,000 generated cases); ``-rA`` shows its counts.
"""

import logging
import os

import factory
import schemathesis
from brokerkit import ADMIN_TOKEN
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

EXAMPLES = int(os.environ.get("M2KT_FUZZ_EXAMPLES", "3"))


def test_fuzz_every_operation_with_every_role(broker):
    teacher = broker.teacher("fuzz-teacher")
    _, student = broker.student("fuzz-student")
    with broker.http(teacher.token) as http:  # something to find, so that reads get past 404
        _, env, payload = factory.packet(teacher.key, topics=["a.x"])
        assert http.post("/v1/packets", files=factory.files(env, payload)).status_code == 201
    schema = schemathesis.openapi.from_url(f"{broker.url}/openapi.json")
    counts = {"cases": 0, "5xx": 0, "operations": 0}
    failures: list[str] = []
    for result in schema.get_all_operations():
        operation = result.ok()
        counts["operations"] += 1
        for role, token in (("admin", ADMIN_TOKEN), ("teacher", teacher.token), ("student", student)):
            headers = {"Authorization": f"Bearer {token}"}

            @given(case=operation.as_strategy())
            @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case):
                counts["cases"] += 1
                response = case.call(base_url=broker.url, headers=headers, timeout=30)  # noqa: B023 (runs now)
                counts["5xx"] += response.status_code >= 500
                case.validate_response(response, excluded_checks=[positive_data_acceptance])

            try:
                check()
            except Exception as exc:  # collect every operation's failure, then report them together
                failures.append(f"{operation.label} as {role}: {str(exc)[:600]}")
    logging.getLogger(__name__).warning("fuzz: %s", counts)  # shown by pytest -rA / on failure
    assert not failures, "\n\n".join(failures[:5])
    assert counts["operations"] >= 15
    assert counts["cases"] >= counts["operations"] * 3
    assert counts["5xx"] == 0
