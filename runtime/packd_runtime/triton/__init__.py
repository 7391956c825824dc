"""Serving through Triton Inference Server: the `packd` line model that runs inside the server
(`line_model.py`) and the client camera software calls (`client.py`)."""
