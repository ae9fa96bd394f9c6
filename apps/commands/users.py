"""``neolabel users``: the built-in users of a study set (what ``neolabel serve --auth local`` logs in against).

Users live in the study set's annotation database (``<studies>/.neolabel/annotation.db``, argon2
hashes only), so they travel with the annotations; every change is in the audit trail. Passwords are
read from a hidden prompt, or from one line of standard input with ``--password-stdin`` (scripts).
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer

app = typer.Typer(
    name="users",
    help="Built-in users of a study set: add, list, remove, passwd (roles: admin, reviewer, annotator, user).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

STUDIES = typer.Option(..., "--studies", help="The study set (as given to neolabel serve --studies).")
PASSWORD_STDIN = typer.Option(False, "--password-stdin", help="Read the password from one line of standard input.")


def _store(studies: Path):
    from apps.studies import StudiesError, servable_studies
    from strategies.annotate.state import open_state
    from strategies.annotate.users import UserStore

    try:
        served = servable_studies(studies)
    except StudiesError as exc:
        raise typer.BadParameter(str(exc), param_hint="--studies") from None
    return UserStore(open_state(served))


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    return typer.prompt("password", hide_input=True, confirmation_prompt=True)


def _actor() -> str:
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _run(action, *args) -> None:
    from strategies.annotate.users import UserError

    try:
        action(*args, actor=_actor())
    except UserError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


@app.command("add")
def add(
    name: str = typer.Argument(..., help="User name (letters, digits, '.', '_', '@', '-')."),
    role: str = typer.Argument(..., help="admin, reviewer, annotator or user."),
    studies: Path = STUDIES,
    password_stdin: bool = PASSWORD_STDIN,
) -> None:
    """Add a user with a role (admin: settings, training, models, deletions; annotator: next sample, save, infer;
    reviewer: read every label and submission; user: read only)."""
    store = _store(studies)
    _run(store.add, name, role, _password(password_stdin))
    typer.echo(f"added {name} ({role.strip().lower()})")


@app.command("list")
def list_users(studies: Path = STUDIES) -> None:
    """List the users and their roles (never a password)."""
    rows = _store(studies).list_users()
    if not rows:
        typer.echo("no users (neolabel users add --studies DIR NAME ROLE)")
    for r in rows:
        typer.echo(f"{r['name']}\t{r['role']}\tadded {r['created_at']}\tchanged {r['updated_at']}")


@app.command("remove")
def remove(name: str = typer.Argument(..., help="User name."), studies: Path = STUDIES) -> None:
    """Remove a user; their tokens stop working at once (their annotations stay)."""
    store = _store(studies)
    _run(store.remove, name)
    typer.echo(f"removed {name}")


@app.command("passwd")
def passwd(name: str = typer.Argument(..., help="User name."), studies: Path = STUDIES,
           password_stdin: bool = PASSWORD_STDIN) -> None:
    """Set a user's password; tokens issued before stop working."""
    store = _store(studies)
    _run(store.set_password, name, _password(password_stdin))
    typer.echo(f"password of {name} changed")
