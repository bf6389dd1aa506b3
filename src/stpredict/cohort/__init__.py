"""Predict-only runs on a new cohort: a sample sheet predicted by the trained models of an earlier run.

``plan`` (parse time: the ``cohorts`` config and its sheets), ``match`` (what a section must
share with the model: genes, µm/px), ``predict`` (job time: patches at the model's geometry,
predictions, external-validation scores).
"""
