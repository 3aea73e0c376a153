"""Metric math on features and statistics: pure functions, mergeable float64 accumulators, registry.

Nothing here imports models, sampling, cli or report: a metric is math on features. The registry
imports the modules that register pixel- and code-space metrics (recon, lpips) on first lookup.
"""
