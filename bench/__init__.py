"""Benchmarks and accuracy studies: scripts that print numbers side by side in one run and write
``bench/results/``. A package (installed editable with the project) so the scripts import each other
and the library's public functions; run them as ``python bench/<name>.py`` or ``python -m bench.<name>``."""
