"""The service's ``autopaint`` sub-commands (``serve``, ``worker``, ``submit``, ``cohort``, ``demo``,
``admin``), added to the library's command line by :mod:`services.cli`."""
