"""Training-free nearest-neighbour detector (the k-shot table's row 0)."""
