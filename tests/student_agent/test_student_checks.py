"""What the student checks first: its token and role, its topics, its query inputs (no model is trained here).

A refused token or a teacher's token must stop `m2kt-student run` before it loads a model,
downloads or fits anything, and a 401/403 from a topic reader is not an outage to retry.
"""

import time
import types

import pytest
from typer.testing import CliRunner

import student_agent.model
from m2kt.client import BrokerClient
from m2kt.errors import Forbidden, Unauthorized
from m2kt.ml.tasks import get_task
from student_agent import checks
from student_agent.agent import STATE_FILE, StudentAgent
from student_agent.cli import app

MODARITH = get_task("modarith", p=17)
runner = CliRunner()


def test_topics_must_be_the_familys():
    checks.require_topics(MODARITH, ["modarith.range", "modarith.carry"])
    with pytest.raises(ValueError) as caught:
        checks.require_topics(MODARITH, ["modarith.range", "modarith.rnage"])
    assert str(caught.value).startswith("modarith.rnage: not a topic of the modarith task; its topics are ")
    assert "modarith.range" in str(caught.value)


@pytest.mark.parametrize(
    ("text", "says"),
    [("hello", "hello not in its vocabulary"), ("3 + 40 * 5", "40 not in its vocabulary"), ("   ", "empty")],
)
def test_query_inputs_must_be_in_the_familys_vocabulary(text, says):
    checks.require_inputs(MODARITH, ["3 + 4 * 5", "16 + 0 * 16"])
    with pytest.raises(ValueError) as caught:
        checks.require_inputs(MODARITH, ["3 + 4 * 5", text])
    assert says in str(caught.value) and "inputs look like '" in str(caught.value)
    boolean = get_task("boolean")
    checks.require_inputs(boolean, ["( 1 and not 0 ) xor 1"])
    with pytest.raises(ValueError):
        checks.require_inputs(boolean, ["1 + 2"])


def test_topics_without_concepts_keep_the_order_asked():
    assert checks.topics_without_concepts(["a.x", "a.y"], ["a.z", "a.x", "a.w"]) == ["a.z", "a.w"]


@pytest.fixture
def sqlite_broker(tmp_path):
    from brokerkit import Broker, ServerThread, broker_settings

    from broker.db import make_engine
    from broker.migrate import upgrade

    db = tmp_path / "broker.db"
    engine = make_engine(f"sqlite:///{db}")
    upgrade(engine)
    engine.dispose()
    settings = broker_settings(f"sqlite:///{db}", tmp_path / "data")
    with ServerThread(settings) as server:
        yield Broker(server.url, settings, "sqlite")


def test_require_role_tells_a_student_from_the_rest(sqlite_broker):
    _, student = sqlite_broker.student()
    teacher = sqlite_broker.teacher()
    with sqlite_broker.client(student) as client:
        client.require_role("student")
    with sqlite_broker.client(teacher.token) as client, pytest.raises(Forbidden, match="not a student's"):
        client.require_role("student")
    with sqlite_broker.client("m2kt_not-a-token") as client, pytest.raises(Unauthorized, match="refuses this token"):
        client.require_role("student")
    with sqlite_broker.admin as admin:
        with pytest.raises(Forbidden):
            admin.require_role("student")
        kinds = [e["kind"] for e in admin.log()["items"]]
    assert "report" not in kinds  # the probe changed nothing


@pytest.fixture
def cli_env(sqlite_broker, tmp_path, monkeypatch):
    monkeypatch.setenv("M2KT_STUDENT_BROKER_URL", sqlite_broker.url)
    monkeypatch.setenv("M2KT_STUDENT_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("M2KT_STUDENT_MODEL_DIR", str(tmp_path / "model"))
    monkeypatch.delenv("M2KT_STUDENT_TOKEN_FILE", raising=False)
    monkeypatch.delenv("M2KT_STUDENT_TOPICS", raising=False)
    return tmp_path


def _one_line(result, code, *needles):
    assert result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    for needle in needles:
        assert needle in lines[0], lines[0]


def _no_model(path):
    raise AssertionError("the model was loaded before the token was checked")


def test_run_checks_the_token_and_role_before_the_model(sqlite_broker, cli_env, monkeypatch):
    monkeypatch.setattr(student_agent.model, "load_student", _no_model)
    args = ["run", "--topic", "modarith.range"]
    teacher = sqlite_broker.teacher()
    monkeypatch.setenv("M2KT_STUDENT_TOKEN", teacher.token)
    _one_line(runner.invoke(app, args), 1, "not a student's")
    monkeypatch.setenv("M2KT_STUDENT_TOKEN", "m2kt_wrong")
    started = time.monotonic()
    _one_line(runner.invoke(app, args), 1, "refuses this token", sqlite_broker.url)
    assert time.monotonic() - started < 60  # not retried: a 401 is not an outage
    monkeypatch.setenv("M2KT_STUDENT_BROKER_URL", sqlite_broker.url + "/v1")
    _one_line(runner.invoke(app, args), 2, f"{sqlite_broker.url}/v1", "give the broker's root")
    assert not (cli_env / "state").exists()


def test_run_refuses_a_topic_outside_the_family_before_it_is_kept(sqlite_broker, cli_env, monkeypatch):
    _, token = sqlite_broker.student()
    monkeypatch.setenv("M2KT_STUDENT_TOKEN", token)
    monkeypatch.setattr(student_agent.model, "load_student", lambda path: types.SimpleNamespace(family=MODARITH))
    _one_line(runner.invoke(app, ["run", "--topic", "modarith.rnage"]), 2, "modarith.rnage: not a topic")
    assert not (cli_env / "state" / STATE_FILE).exists()


def test_query_refuses_foreign_inputs_and_says_when_a_topic_has_nothing(cli_env, monkeypatch):
    monkeypatch.setattr(student_agent.model, "load_student", lambda path: types.SimpleNamespace(family=MODARITH))
    _one_line(runner.invoke(app, ["query", "hello"]), 2, "'hello' is not an input of the modarith task")
    _one_line(runner.invoke(app, ["query", "3 + 4 * 5", "--topic", "modarith.rnage"]), 2, "not a topic")
    result = runner.invoke(app, ["query", "3 + 4 * 5", "--topic", "modarith.range"])
    _one_line(result, 1, "nothing integrated for topic modarith.range yet")


def test_a_reader_refused_by_the_broker_stops_the_run(sqlite_broker, tmp_path):
    def connect() -> BrokerClient:
        return BrokerClient(sqlite_broker.url, "m2kt_wrong", retries=0)

    with connect() as client:
        agent = StudentAgent(types.SimpleNamespace(), client, tmp_path / "state")  # type: ignore[arg-type]
        started = time.monotonic()
        with pytest.raises(Unauthorized):
            agent.run(["modarith.range"], connect, stop=lambda: time.monotonic() - started > 60, retry_seconds=0.05)
    assert time.monotonic() - started < 60
