"""Helpers shared by the tests, scripts/ and benchmarks/: model files generated into a cache folder, the
fake model, the numpy references, real servers, kernel builds, fuzzing strategies.

Imported as the package `support` (`from support.servers import start_server`), never by editing
sys.path, and never with the repository's root on the path (./sysinfer, the source folder without its
compiled core, would shadow the installed package):
- pytest: pyproject.toml's `pythonpath = ["tests"]` puts tests/ on the path (CI's scripts/test.sh,
  `python -P -m pytest tests/...`).
- scripts/ and benchmarks/: each holds a symlink `support -> ../tests/support`, and Python puts a
  script's own folder first on the path, so `python benchmarks/decode_speed.py` (from any folder)
  finds it."""
