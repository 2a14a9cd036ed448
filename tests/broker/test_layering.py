"""The broker never imports the ML stack: it must run where torch cannot be installed."""

import subprocess
import sys


def test_broker_imports_no_ml_stack():
    code = (
        "import sys, broker.main, broker.cli, broker.api, m2kt, m2kt.client; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in {'torch', 'transformers', 'sklearn'} "
        "or m.startswith('m2kt.ml')); print(','.join(bad)); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
