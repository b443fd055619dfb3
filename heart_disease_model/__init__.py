"""The sealed model: the code that every registered heart-disease model carries and runs.

`train` logs this package, and only this package, as the model's code (MLflow "models
from code": `entry.py` builds the model, `model.py` is the pyfunc; the fitted sklearn
pipeline inside is a skops artifact). Wherever a model is loaded, it runs the copy logged
with it, never the project's: a champion validated last month answers with last month's
input rules and fast path, whatever the checkout holds today.

Rules: this package imports nothing of the project (only the standard library and the
libraries in the model's requirements); it uses relative imports only; consumers (the
app, `mlflow models serve`, score, monitor, evaluate) use the loaded model object and do
not import this package themselves. The pipeline's steps import it to build what the
model will carry (the codebook rules for ingest, the fast path for train).
"""
