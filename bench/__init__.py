"""Oblivio's benchmarks: `.venv/bin/python bench/run.py [--quick] [--only NAME,...]` (or `make bench`)."""
