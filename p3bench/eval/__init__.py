"""Evaluation: answer extraction and checking (``p3bench.eval.answers``) and the evaluator registry there."""
