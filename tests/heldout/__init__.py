"""Held-out moving-shapes clips from an independently written generator (see world.py)."""
