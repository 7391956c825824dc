"""`packd-demo`: the main job on built-in defaults, end to end (data, training, bundles, the torch-free runtime, a
benchmark summary). It sits at the top of the package stack: nothing imports it back."""
