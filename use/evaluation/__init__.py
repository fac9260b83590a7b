"""Dynamic user re-identification and classification of user embeddings, period by period.

``eval_reid.py`` and ``eval_classification.py`` call ``use.evaluation.cli.main``. The parts:
``io`` reads the TSV, ``behaviors`` cuts histories and context periods, ``neural`` and
``baselines`` embed them per strategy (see ``strategies``), ``reid`` and ``classification``
score the embeddings, and ``report`` writes tables, JSON and plots.
"""
