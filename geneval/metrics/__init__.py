"""Metric math on features and statistics: pure functions, mergeable float64 accumulators, registry.

Nothing here imports models, sampling, cli or report: a metric is math on features.
"""
