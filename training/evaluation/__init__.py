"""medvqa-lite evaluation: named scoring rules, the paper's tables with Wilson intervals, integrity checks.

Public API (imports stay light; torch is only imported by ``evaluate`` when it runs a model):
- ``scorers.SCORERS`` (the registry of named rules), ``scorers.flags(record)``, ``scorers.PRIMARY``;
- ``normalize.normalize(text)`` (its data table: ``synonyms.py``);
- ``report.score_records(records, train_records=None, *, throughput=None) -> ScoreResult`` (``.scored``,
  ``.report``), ``report.write_report(report, out_dir)``, ``report.write_outputs(result, out_dir)``;
- ``evaluate.evaluate(model_dir, data, out_dir, ...)`` (``medvqa eval``), ``score_cli`` (``medvqa score``).
"""
