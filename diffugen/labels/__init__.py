"""The labels stage: DAAM labels from heatmaps, relabeling, YOLO labels, and comparing the two."""
