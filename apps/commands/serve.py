"""``neolabel serve``: start the MONAI Label server with the neonatal app (demo set when no --studies)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from apps.demo import DEMO_ITERATIONS

# MONAI Label settings that must be off or fixed before ``monailabel`` is imported: no MLflow tracking,
# no scoring runs after every request, no datastore file watcher; nothing reaches the network.
SERVER_ENV: dict[str, str] = {
    "MONAI_LABEL_TRACKING_ENABLED": "false",
    "MONAI_LABEL_AUTO_UPDATE_SCORING": "false",
    "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false",
    "MONAI_LABEL_TASKS_SCORING": "false",
}


def app_dir() -> Path:
    import neonatal_app

    return Path(neonatal_app.__file__).resolve().parent


def server_environment(studies: Path, conf: dict[str, str], port: int) -> dict[str, str]:
    """The environment MONAI Label reads its settings from (also inherited by its train subprocess)."""
    import json

    env = dict(SERVER_ENV)
    env.update(
        {
            "MONAI_LABEL_APP_DIR": str(app_dir()),
            "MONAI_LABEL_STUDIES": str(studies),
            "MONAI_LABEL_APP_CONF": json.dumps(conf),
            "MONAI_LABEL_SERVER_PORT": str(port),
            # MONAI Label's background tasks (/train) read os.environ["PYTHONPATH"] unconditionally;
            # `monailabel start_server` sets it, our in-process start must too.
            "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        }
    )
    return env


def apply_settings(env: dict[str, str]) -> None:
    """Export ``env`` and mirror it into ``monailabel.config.settings`` (if it was imported already)."""
    import json

    os.environ.update(env)
    from monailabel.config import settings

    for key, value in env.items():
        if not hasattr(settings, key):
            continue
        current = getattr(settings, key)
        if isinstance(current, bool):
            setattr(settings, key, value.lower() in ("1", "true", "yes"))
        elif isinstance(current, int):
            setattr(settings, key, int(value))
        elif isinstance(current, dict):
            setattr(settings, key, json.loads(value))
        else:
            setattr(settings, key, value)


def is_loopback(host: str) -> bool:
    """Whether ``--host`` keeps the server on this machine (only then may it run without logins)."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def resolve_auth(host: str, auth: str | None, insecure: bool, conf: dict[str, str]) -> str:
    """The ``--auth`` mode: given, or none on loopback, oidc with a realm URL, else local. No logins on an
    interface others can reach is refused unless ``--insecure``: anyone there could delete work."""
    given = conf.get("auth")
    if auth is not None and given is not None and given != auth:
        raise typer.BadParameter(f"--auth {auth} contradicts --conf auth {given}", param_hint="--auth")
    mode = auth or given or ("none" if is_loopback(host) else "oidc" if conf.get("auth_realm_url") else "local")
    if mode not in ("none", "local", "oidc"):
        raise typer.BadParameter(f"{mode!r}: expected none, local or oidc", param_hint="--auth")
    if mode == "oidc" and not conf.get("auth_realm_url"):
        raise typer.BadParameter("--auth oidc needs --conf auth_realm_url https://HOST/realms/NAME",
                                 param_hint="--auth")
    if mode == "none" and not is_loopback(host) and not insecure:
        raise typer.BadParameter(
            f"--host {host} without logins would let anyone who reaches this port delete annotations and models. "
            "Use --auth local (users: neolabel users add --studies DIR NAME ROLE) or --auth oidc "
            "(--conf auth_realm_url https://HOST/realms/NAME); --insecure starts it anyway.",
            param_hint="--auth",
        )
    conf["auth"] = mode
    if insecure:
        conf["auth_insecure"] = "true"
    return mode


def auth_banner(mode: str, served: Path, users_dir: str, serve_studies: str, conf: dict[str, str]) -> str:
    """What the start prints about logins: with none, how to turn them on (``serve_studies`` "" = the demo)."""
    if mode == "local":
        from strategies.annotate.state import open_state
        from strategies.annotate.users import UserStore

        n = UserStore(open_state(served)).count()
        if n == 0:
            raise typer.BadParameter(
                f"--auth local, but {served} has no users yet: add one with\n"
                f"  neolabel users add --studies {users_dir} NAME admin --password-stdin",
                param_hint="--auth",
            )
        return f"auth: local ({n} user(s); Slicer asks for user name and password at the first request)"
    if mode == "oidc":
        return f"auth: oidc (realm {conf.get('auth_realm_url')}, client {conf.get('auth_client_id', 'monailabel-app')})"
    return ("auth: none (no logins; only clients on this machine are answered). To give annotators their own "
            f"logins:\n  neolabel users add --studies {users_dir} NAME admin|annotator|reviewer|user\n"
            f"  neolabel serve {'--studies ' + serve_studies + ' ' if serve_studies else ''}--auth local"
            " [--host 0.0.0.0]")


def parse_conf_args(args: list[str]) -> list[tuple[str, str]]:
    """``--conf KEY VALUE`` pairs (repeatable, MONAI Label style) from the command's extra arguments.

    typer cannot declare a repeatable two-value option, so ``serve`` receives them unparsed.
    """
    pairs: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        if args[i] in ("--conf", "-c"):
            if i + 2 >= len(args) or args[i + 1].startswith("--"):
                raise typer.BadParameter("expected --conf KEY VALUE", param_hint="--conf")
            pairs.append((args[i + 1], args[i + 2]))
            i += 3
        else:
            raise typer.BadParameter(f"unexpected argument {args[i]!r}; app settings are given as --conf KEY VALUE")
    return pairs


def serve(
    ctx: typer.Context,
    studies: Path | None = typer.Option(
        None, "--studies", help="Study set to serve: a MONAI Label folder or a dHCP tree. Default: the demo set."
    ),
    port: int = typer.Option(8000, "--port", help="HTTP port."),
    host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on (0.0.0.0 = all)."),
    workdir: Path = typer.Option(Path("."), "--workdir", help="Where the demo set lives (<workdir>/demo)."),
    bootstrap_iterations: int = typer.Option(
        DEMO_ITERATIONS, "--bootstrap-iterations",
        help="Training iterations of the demo's first model (fixed and seeded: the same model on a busy machine).",
    ),
    prepare_only: bool = typer.Option(False, "--prepare-only", help="Prepare studies and model, do not start."),
    auth: str | None = typer.Option(
        None, "--auth", help="Logins: none (no accounts, loopback only), local (neolabel users), oidc (an OIDC/"
        "Keycloak realm, --conf auth_realm_url). Default: none on loopback, else local (oidc with a realm URL)."
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="Allow --auth none on an interface others can reach (anyone may then delete work)."
    ),
) -> None:
    """Serve a study set to 3D Slicer (MONAI Label); without --studies, a generated demo set with a first model.

    App settings: --conf KEY VALUE (repeatable), e.g. --conf budget_dispersion 0.5 --conf retrain_every_labels 5;
    every key and its default is listed in docs/CONF.md.
    """
    import time

    from strategies.annotate.settings import AppConfig, ConfError

    t0 = time.perf_counter()
    conf = parse_conf_args(list(ctx.args))
    conf_dict = {k: v for k, v in conf}
    if len(conf_dict) != len(conf):
        typer.echo("note: a --conf key was given twice; the last value is used", err=True)
    mode = resolve_auth(host, auth, insecure, conf_dict)
    try:
        cfg = AppConfig.from_conf(conf_dict)
    except ConfError as exc:
        raise typer.BadParameter(str(exc), param_hint="--conf") from None

    from apps.studies import StudiesError, servable_studies
    from neonatal_app.lib.configs.segmentation import model_path

    if studies is None:
        from apps.demo import bootstrap_model, prepare_demo

        demo = prepare_demo(workdir)
        served = servable_studies(demo.served)
        conf_dict.setdefault("validation_dir", str(demo.validation))
        mp = model_path(served)
        if not mp.is_file() and not cfg.pretrained:
            bootstrap_model(demo, mp, preset=cfg.preset, iterations=bootstrap_iterations,
                            device=None if cfg.device == "auto" else cfg.device)
        elif mp.is_file():
            typer.echo(f"reusing the demo model {mp}")
        users_dir, serve_args = str(demo.served), ""
    else:
        try:
            served = servable_studies(studies)
        except StudiesError as exc:
            raise typer.BadParameter(str(exc), param_hint="--studies") from None
        users_dir = serve_args = str(studies)

    banner = auth_banner(mode, served, users_dir, serve_args, conf_dict)
    env = server_environment(served, conf_dict, port)
    apply_settings(env)
    typer.echo(f"studies: {served}\napp: {app_dir()}\nprepared in {time.perf_counter() - t0:.0f} s\n{banner}")
    if prepare_only:
        return
    typer.echo(f"MONAI Label server on http://{host}:{port}  (3D Slicer: MONAI Label module → server "
               f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port})")
    import uvicorn

    uvicorn.run("monailabel.app:app", host=host, port=port, log_level="info", access_log=False)


serve.context_settings = {"allow_extra_args": True, "ignore_unknown_options": True}  # type: ignore[attr-defined]


if __name__ == "__main__":  # `python -m apps.commands.serve ...` (used by the end-to-end test)
    _cli = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    _cli.command(context_settings=serve.context_settings)(serve)
    _cli()
