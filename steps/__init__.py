"""The pipeline: the seven steps (one module each: a pure core and a thin shell), `main`
that chains them, and `pipeline`, the DAG they form. The engine runs them."""

from engine import startup

startup.pause()  # collect rarely while the program imports (engine/startup.py)
