"""The file MLflow runs to build the model whenever it loads it ("models from code").

MLflow puts the model's `code/` folder first on sys.path and then runs this file. A
process that already holds another copy of heart_disease_model (the project's own, or
an older version's in an app that reloads) would keep using that copy: Python imports a
package once per process. So this file drops any copy that is not the one beside it and
imports the package from its own folder, by path: the model runs the code logged with
it. Objects of a model loaded earlier keep the modules they were built with.
"""

import importlib.util
import sys
from pathlib import Path

import mlflow

PACKAGE = "heart_disease_model"
_here = Path(__file__).resolve().parent
# Beside a logged model's files the package is in code/; in the project (while train
# logs the model) this file sits inside the package itself.
_home = _here / "code" / PACKAGE if (_here / "code" / PACKAGE).is_dir() else _here
_loaded = sys.modules.get(PACKAGE)
if _loaded is None or Path(_loaded.__file__).resolve().parent != _home:
    for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
        del sys.modules[name]
    spec = importlib.util.spec_from_file_location(PACKAGE, _home / "__init__.py",
                                                  submodule_search_locations=[str(_home)])
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = package
    spec.loader.exec_module(package)

from heart_disease_model.model import HeartDiseaseModel  # noqa: E402  (the package chosen above)

mlflow.models.set_model(HeartDiseaseModel())
