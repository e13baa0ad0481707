"""Evaluation: metrics, operating points, paired tests, site profiles, training-set overlap."""
