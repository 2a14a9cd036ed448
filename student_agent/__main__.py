"""`python -m student_agent` is `m2kt-student`."""

from student_agent.cli import app

app(prog_name="m2kt-student")
