"""A Hydra sweeper that runs an Optuna study shared by any number of workers.

Every worker started with the same `hydra.sweeper.storage` and `hydra.sweeper.study_name`
joins one study; the study stops at `hydra.sweeper.n_trials` trials in all; a worker that
dies mid-trial is found by Optuna's heartbeat and its trial retried by another. The search
space is Hydra's sweep syntax (`tag(log, interval(0.001, 10))`, `range(2, 8)`,
`choice(1, 2, 4)`), from `hydra.sweeper.params` or the command line.

The names below are what each job sees in its environment; they import nothing, so the
task function can read them without importing Optuna.
"""

STUDY_ENV = "OPTUNA_STUDY_SWEEPER_STUDY"  # the study's name
TRIAL_ENV = "OPTUNA_STUDY_SWEEPER_TRIAL"  # the Optuna trial number this job evaluates
