"""The ``neolabel`` command line: one thin typer entry point per library function.

Command modules import only typer at import time, so ``neolabel --help`` stays fast; torch,
MONAI and MONAI Label are imported inside the command that needs them.
"""

from __future__ import annotations

import importlib

import typer

# command name -> (module in apps.commands, function name)
COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("serve", "serve"),
    "users": ("users", "app"),  # a group: users add|list|remove|passwd
    "synth": ("synth", "synth"),
    "plan": ("plan", "plan"),
    "train": ("train", "train"),
    "infer": ("infer", "infer"),
    "evaluate": ("evaluate", "evaluate"),
    "split": ("split", "split"),
    "simulate": ("simulate", "simulate"),
    "export": ("export", "export"),
}

app = typer.Typer(
    name="neolabel",
    help=f"Active annotation for neonatal brain MRI: {', '.join(COMMANDS)}.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

for _name, (_module, _func) in COMMANDS.items():
    _fn = getattr(importlib.import_module(f"apps.commands.{_module}"), _func)
    if isinstance(_fn, typer.Typer):
        app.add_typer(_fn, name=_name)
        continue
    # a command may ask for click context settings (serve parses repeated `--conf KEY VALUE` pairs itself)
    app.command(_name, context_settings=getattr(_fn, "context_settings", None))(_fn)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
