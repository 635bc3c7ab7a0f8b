"""The store stage: the FiftyOne dataset, files under the output root, batched writes, repair."""
