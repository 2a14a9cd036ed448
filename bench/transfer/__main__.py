from bench.transfer.run import app

app()
