"""`python -m teacher_agent` is `m2kt-teacher`."""

from teacher_agent.cli import app

app(prog_name="m2kt-teacher")
