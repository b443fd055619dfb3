"""The FastAPI app that serves the champion (python -m serving), its webhooks and metrics."""

from engine import startup

startup.pause()  # collect rarely while the program imports (engine/startup.py)
