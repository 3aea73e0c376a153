"""Reports over results: comparison tables (tables, html), A-vs-B deltas (compare), CI gates (gate).

report/ reads results and the metric registry's directions; it never imports models or sampling.
"""
