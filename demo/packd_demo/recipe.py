"""The demo's fixed recipe, shared by the demo and the benchmarks that time its training."""

DEMO_TRAIN = ["grid", "carpet", "stripes", "disc", "nut", "plate"]  # meta-training categories; the target is held out
