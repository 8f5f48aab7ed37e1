"""The registered model: an MLflow pyfunc "model from code".

MLflow logs this file and the models directory (state dicts and manifest) as artifacts;
no pickle of Python objects is written, and the weights are checked against the
manifest's hashes when the model loads.
"""
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class OblivioEnsembleModel(PythonModel):
    def load_context(self, context):
        from oblivio.ensemble import Ensemble

        self.models_dir = Path(context.artifacts["models"])
        self.ensemble = Ensemble.load(self.models_dir)
        import json

        self.labels = json.loads((self.models_dir / "manifest.json").read_text())["labels"]

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        """Raw rows (the columns of the user's table, strings as strings) -> class names and probabilities.

        The rows are encoded by the recipe's own encoder, exactly as training encoded them."""
        proba = self.ensemble.predict_proba(model_input[list(self.ensemble.features)])
        out = pd.DataFrame({f"proba_{label}": proba[:, i] for i, label in enumerate(self.labels)})
        out.insert(0, "prediction", [self.labels[i] for i in proba.argmax(axis=1)])
        return out


mlflow.models.set_model(OblivioEnsembleModel())
