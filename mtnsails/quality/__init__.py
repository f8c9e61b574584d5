"""Data quality: the rules that find conversations which would teach a model bad habits, their
thresholds, the report, and near-duplicate search."""
