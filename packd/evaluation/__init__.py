"""Full-shot and few-shot evaluation, tiled evaluation, metrics, overlays and reports."""
