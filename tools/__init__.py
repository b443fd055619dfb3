"""Commands beside the pipeline: sweeps (and their Optuna plugin), the leaderboard,
batch scoring and monitoring. They use the engine and a loaded model; none of them is a
step, and no step imports them."""

from engine import startup

startup.pause()  # collect rarely while the program imports (engine/startup.py)
