"""``python -m loquent.simulator --host 127.0.0.1 --port 8899``: run the simulator."""

import typer

from loquent.simulator.cli import serve

if __name__ == "__main__":
    typer.run(serve)
