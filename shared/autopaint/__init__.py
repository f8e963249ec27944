"""autopaint: unsupervised tumour segmentation in PET/CT by autoinpainting.

Subpackages ``imaging``, ``model``, ``segment`` and ``data`` form the pure library: they take
explicit arguments and import no web, queue, database or settings code.
"""

__version__ = "0.1.0"
