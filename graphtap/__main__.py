from graphtap.cli import run

run()
