"""Measured speed, never asserted: `gan-dist bench` (training.py: the framework's step vs a bare PyTorch
loop of the same model, interleaved; whole `gan-dist train` runs) and `gan-dist bench-data` (data.py: the
training stream's samples/s per worker count)."""
