"""`python -m broker` is `m2kt-broker`."""

from broker.cli import app

app(prog_name="m2kt-broker")
