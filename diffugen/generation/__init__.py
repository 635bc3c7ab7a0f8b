"""The generation stage: models and their families, attention capture, planning, the run loop, shards."""
