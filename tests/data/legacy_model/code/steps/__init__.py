"""The pipeline's steps (one module each), the DAG (pipeline.py) and the plumbing
they share (names, store, fingerprint, context, runner, cli: see the README's code layout).

A regular package on purpose: a logged model carries a copy of this folder and MLflow
puts that copy on sys.path when it loads the model; as a namespace package, `steps`
would then import later modules from the model's (older) copy."""
