"""The engine that runs the steps, written once: command line, config and its checks,
the tracking store, cache keys, claims and liveness, step runs and their cards, the
logged model's storage and the registry. Steps, tools and serving import it; it
imports no step and no tool."""
