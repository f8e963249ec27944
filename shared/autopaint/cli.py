"""The library's command line: ``validate``, ``data``, ``model``, ``segment`` (library work only).

Each area registers its sub-commands from a module with a ``register(app)`` function; heavy
imports (torch, SimpleITK) happen inside the commands, so ``--help`` is fast. Every
:class:`autopaint.errors.AutopaintError` becomes one line on stderr and exit code 2.
The installed ``autopaint`` command is :mod:`services.cli`, which builds the same app with the
service's commands added (``serve``, ``worker``, ``submit``, ``cohort``, ``demo``, ``admin``);
this package never imports ``services``.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterable

import typer

from autopaint.errors import AutopaintError

LIBRARY_COMMANDS = tuple(f"autopaint.commands.{n}" for n in ("validate", "data", "model", "segment"))


def build_app(command_modules: Iterable[str]) -> typer.Typer:
    """A Typer app with ``version`` and the commands each named module registers."""
    app = typer.Typer(
        name="autopaint",
        help="Unsupervised tumour segmentation in PET/CT by autoinpainting.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )

    @app.callback()
    def _root() -> None:
        """Unsupervised tumour segmentation in PET/CT by autoinpainting (paper: autopaint)."""

    @app.command()
    def version() -> None:
        """Print the autopaint version."""
        from autopaint import __version__

        print(__version__)

    for name in command_modules:
        importlib.import_module(name).register(app)
    return app


app = build_app(LIBRARY_COMMANDS)


def run(typer_app: typer.Typer, argv: list[str] | None = None) -> None:
    """Run ``typer_app``, mapping project errors to one line on stderr and exit code 2."""
    try:
        typer_app(args=argv)
    except AutopaintError as exc:
        print(f"autopaint: error [{exc.code}]: {exc}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the library-only command line (``python -m autopaint.cli``)."""
    run(app, argv)


if __name__ == "__main__":
    main()
