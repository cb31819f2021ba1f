"""Beyond one run: a corpus of files annotated exactly once (corpus.py, manifest.py, runner.py;
on Ray: ray_backend.py) and cells of cameras placed on a Ray cluster (cells.py, registry.py).

Nothing here imports Ray at module level: `pip install 'streamseg[ray]'` is optional, and the
corpus runs on one machine without it (--jobs N).
"""
