"""Hand1000 (Zhang et al., AAAI 2025): Stage I (`features`), the fusion (`fusion`), Stages II and III
(`trainer`), the pipeline (`pipeline`) and generation (`generate`)."""
