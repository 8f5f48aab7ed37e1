"""Serving: the ensemble as an MLflow pyfunc model."""
