"""Turning per-word cross-attention heatmaps into labels (masks, polygons, boxes, scores)."""
