"""The operations and review console in the browser (``neuroflow serve console``): the worklist, each
study's timeline and results, replays and re-runs for operators, accept/reject for radiologists.
Web layer in ``app``, pages' data in ``worklist``, decisions in ``reviews``, log-in in ``auth``."""
