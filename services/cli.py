"""The installed ``autopaint`` command: the library's commands plus the service's.

``autopaint.cli`` holds the library work (validate, data, model, segment); this adds ``serve``,
``worker``, ``submit``, ``cohort``, ``demo`` and ``admin`` from :mod:`services.commands`.
"""

from __future__ import annotations

from autopaint.cli import LIBRARY_COMMANDS, build_app, run

SERVICE_COMMANDS = ("services.commands.service", "services.commands.admin")

app = build_app((*LIBRARY_COMMANDS, *SERVICE_COMMANDS))


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``autopaint`` (``python -m services.cli``)."""
    run(app, argv)


if __name__ == "__main__":
    main()
