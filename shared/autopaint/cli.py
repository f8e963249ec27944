"""The ``autopaint`` command.

Each area registers its sub-commands from ``autopaint/commands/<area>.py`` (a ``register(app)``
function); heavy imports (torch, SimpleITK) happen inside the commands, so ``--help`` is fast.
Every :class:`autopaint.errors.AutopaintError` becomes one line on stderr and exit code 2.
"""

from __future__ import annotations

import importlib
import sys

import typer

from autopaint.errors import AutopaintError

COMMAND_MODULES = ("validate", "data", "model", "segment", "service", "admin")

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


for _name in COMMAND_MODULES:
    importlib.import_module(f"autopaint.commands.{_name}").register(app)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the Typer app, mapping project errors to one line and exit code 2."""
    try:
        app(args=argv)
    except AutopaintError as exc:
        print(f"autopaint: error [{exc.code}]: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
