"""Training, evaluation and model comparison on chest X-ray folders (uses engine and models)."""
