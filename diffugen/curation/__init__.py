"""The curation stage: the review queue and its decisions, exports with splits, bootstrap training."""
