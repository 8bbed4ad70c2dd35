"""Evaluation for both methods: the FID Inception network, the metrics, `handsynth evaluate` and the
run's report page."""
