"""Every ``--conf key value`` of the app, parsed once into a typed, validated :class:`AppConfig`.

MONAI Label hands an app its ``--conf`` pairs as a ``dict[str, str]``. Parsing them in one place
means a typo or a bad value fails at server start with a message that names the key and what is
allowed, instead of surfacing later inside a request. ``docs/CONF.md`` is generated from the
field table below (:func:`conf_table_markdown`), so the README cannot drift from the code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from strategies.plan.extents import check_margin
from strategies.plan.selection import AXIS_MODES, SELECTIONS
from training.fit.freeze import FREEZE_DEPTH
from training.model.presets import PRESETS

# a retraining always trains and starts from the served model: the levels that do both
RETRAIN_FREEZE_LEVELS = (*FREEZE_DEPTH, "full")

DEVICE_CHOICES = ("auto", "cpu", "cuda")
INIT_CHOICES = ("served", "scratch")
AUTH_MODES = ("none", "local", "oidc")
JWT_ASYMMETRIC = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
# Keys MONAI Label itself may put into the conf dict; accepted and ignored.
MONAI_LABEL_KEYS = frozenset({"server_mode"})
# Admin-editable annotation strategy keys: persisted with the study set (see strategies/annotate/state.py).
STRATEGY_KEYS = (
    "budget_total_slices",
    "budget_dispersion",
    "budget_axis",
    "budget_margin",
    "budget_selection",
    "seed",
    "lease_minutes",
)


class ConfError(ValueError):
    """A ``--conf`` key that is unknown or a value that cannot be used; the message says which."""


def _bool(value: str) -> bool:
    v = str(value).strip().lower()
    if v in ("1", "true", "yes", "on"):
        return True
    if v in ("0", "false", "no", "off"):
        return False
    raise ValueError("expected true or false")


def _int(lo: int | None = None, hi: int | None = None) -> Callable[[str], int]:
    def parse(value: str) -> int:
        try:
            f = float(str(value).strip())
        except ValueError:
            raise ValueError("expected an integer") from None
        if f != int(f):
            raise ValueError("expected an integer")
        n = int(f)
        if lo is not None and n < lo:
            raise ValueError(f"must be ≥ {lo}")
        if hi is not None and n > hi:
            raise ValueError(f"must be ≤ {hi}")
        return n

    return parse


def _float(lo: float | None = None, hi: float | None = None, lo_open: bool = False) -> Callable[[str], float]:
    def parse(value: str) -> float:
        try:
            f = float(str(value).strip())
        except ValueError:
            raise ValueError("expected a number") from None
        if f != f or f in (float("inf"), float("-inf")):
            raise ValueError("expected a finite number")
        if lo is not None and (f <= lo if lo_open else f < lo):
            raise ValueError(f"must be {'>' if lo_open else '≥'} {lo}")
        if hi is not None and f > hi:
            raise ValueError(f"must be ≤ {hi}")
        return f

    return parse


def _checked(parse: Callable[[str], Any], check: Callable[[Any], Any]) -> Callable[[str], Any]:
    """``parse`` then the planner's own check (one rule for the server and the planner)."""

    def run(value: str) -> Any:
        v = parse(value)
        check(v)
        return v

    return run


def _choice(choices: tuple[str, ...]) -> Callable[[str], str]:
    def parse(value: str) -> str:
        v = str(value).strip().lower()
        if v not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}")
        return v

    return parse


def _text(value: str) -> str:
    return str(value).strip()


def _gpus(value: str) -> str:
    """``all`` or a GPU count ≥ 1 (kept as text: ``all`` depends on the machine the training runs on)."""
    v = str(value).strip().lower()
    return v if v == "all" else str(_int(1)(v))


def _algorithms(value: str) -> str:
    """Public-key JWT algorithms only: accepting HS* from a realm would let its public key sign tokens."""
    algs = [a.strip() for a in str(value).split(",") if a.strip()]
    bad = [a for a in algs if a not in JWT_ASYMMETRIC]
    if not algs or bad:
        raise ValueError(f"expected a comma-separated list of {', '.join(JWT_ASYMMETRIC)}")
    return ",".join(algs)


def _conf(default: Any, parse: Callable[[str], Any], help: str) -> Any:
    return field(default=default, metadata={"parse": parse, "help": help})


@dataclass(frozen=True)
class AppConfig:
    """Typed app configuration; build it with :meth:`from_conf`."""

    # --- model / training
    preset: str = _conf(
        "cpu", _choice(PRESETS), f"Network preset when a model is trained from scratch ({', '.join(PRESETS)})."
    )
    epochs: int = _conf(10, _int(1, 10000), "Epochs of one retraining run (`/train`, count or schedule trigger).")
    train_from: str = _conf(
        "served", _choice(INIT_CHOICES), "Retraining starts from the served model (`served`) or from scratch."
    )
    freeze: str = _conf(
        "full",
        _choice(RETRAIN_FREEZE_LEVELS),
        "Layers retrained when starting from the served model (transfer learning levels of the paper: "
        "shallow = bottleneck and adjacent blocks, medium/deep = 1/2 more blocks each side, full = all).",
    )
    device: str = _conf("auto", _choice(DEVICE_CHOICES), "Device for training and inference; auto = CUDA if present.")
    gpus: str = _conf(
        "all",
        _gpus,
        "GPUs one retraining may use on CUDA (`all` visible ones, or at most N): with 2 or more, one DDP process "
        "per GPU launched by torchrun; on CPU always one process.",
    )
    validation_dir: str = _conf(
        "",
        _text,
        "Folder (dHCP tree or MONAI Label layout) of fully labelled scans; a retrained model that is "
        "worse on it than the served one is not published. Empty = no check.",
    )
    pretrained: str = _conf(
        "",
        _text,
        "Local checkpoint published as the first model when the study set has none (never downloaded).",
    )
    model_outputs_wait_seconds: float = _conf(
        10.0,
        _float(0.0, 3600.0),
        "After a new model is published, the scans' brain extents and uncertainty scores are recomputed in "
        "the background; the first next-sample request waits at most this long for them, and requests use the "
        "previous model's (or the head mask, no scores) for scans not yet done.",
    )
    # --- annotation budget strategy (persisted with the study set, editable in Slicer's options table)
    budget_total_slices: int = _conf(200, _int(1), "Total 2D slices the annotators are asked to label.")
    budget_dispersion: float = _conf(
        0.33,
        _float(0.0, 1.0, lo_open=True),
        "Fraction of a scan's usable slices one scan receives (1.0 = whole scans).",
    )
    budget_axis: str = _conf("axial", _choice(AXIS_MODES), f"Slicing axis: {', '.join(AXIS_MODES)}.")
    budget_margin: float = _conf(
        0.1, _checked(_float(), check_margin), "Fraction of the brain's extent along the axis excluded at each end."
    )
    budget_selection: str = _conf(
        "equidistant",
        _choice(SELECTIONS),
        f"How slices are chosen within a scan: {', '.join(SELECTIONS)}.",
    )
    seed: int = _conf(0, _int(0), "Seed of every random choice (same config + seed = same plan).")
    lease_minutes: float = _conf(
        60.0, _float(0.0, lo_open=True), "How long a served scan is reserved for the annotator who received it."
    )
    # --- retraining triggers
    retrain_every_labels: int = _conf(0, _int(0), "Start a retraining after every N saved labels (0 = off).")
    retrain_interval_minutes: float = _conf(
        0.0, _float(0.0), "Start a retraining every N minutes when new labels arrived since the last one (0 = off)."
    )
    # --- inference
    infer_fast: bool = _conf(True, _bool, "Fast inference (head crop, bf16, few windows); false = paper settings.")
    # --- uploads
    max_upload_mb: float = _conf(
        512.0, _float(0.0, lo_open=True), "Largest label upload accepted (MiB); larger ones are refused (413) unread."
    )
    # --- who may use the server (neonatal_app/lib/auth.py; users: `neolabel users`)
    auth: str = _conf(
        "none",
        _choice(AUTH_MODES),
        "Logins: `none` (no accounts; only loopback clients are answered), `local` (built-in users of the study "
        "set, `neolabel users`), `oidc` (an OIDC/Keycloak realm, `auth_realm_url`). `neolabel serve --auth` sets it.",
    )
    auth_insecure: bool = _conf(
        False, _bool, "With `auth none`, answer clients beyond loopback too (`neolabel serve --insecure`)."
    )
    auth_realm_url: str = _conf(
        "",
        _text,
        "OIDC realm, e.g. `https://HOST/realms/NAME`: its `.well-known/openid-configuration` names the token "
        "endpoint and the signing keys (JWKS).",
    )
    auth_client_id: str = _conf(
        "monailabel-app", _text, "OIDC client that Slicer logins (password grant) are made for."
    )
    auth_audience: str = _conf("", _text, "Audience (`aud`) every OIDC token must carry; empty = `auth_client_id`.")
    auth_algorithms: str = _conf(
        "RS256",
        _algorithms,
        f"Signature algorithms accepted from the realm (comma-separated: {', '.join(JWT_ASYMMETRIC)}).",
    )
    auth_token_minutes: float = _conf(
        30.0, _float(0.0, 1440.0, lo_open=True), "Lifetime of the tokens `POST /auth/token` issues to built-in users."
    )

    explicit: frozenset[str] = field(default=frozenset(), compare=False, repr=False)
    """The keys that were given on the command line (they override persisted strategy settings)."""

    @classmethod
    def conf_keys(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if "parse" in f.metadata]

    @classmethod
    def from_conf(cls, conf: Mapping[str, Any] | None) -> AppConfig:
        """Parse MONAI Label's conf dict; unknown keys and bad values raise :class:`ConfError`."""
        conf = dict(conf or {})
        known = {f.name: f for f in dataclasses.fields(cls) if "parse" in f.metadata}
        unknown = sorted(k for k in conf if k not in known and k not in MONAI_LABEL_KEYS)
        if unknown:
            raise ConfError(f"unknown --conf key(s) {', '.join(unknown)}; known keys: {', '.join(known)}")
        values: dict[str, Any] = {}
        errors = []
        for key, value in conf.items():
            if key in MONAI_LABEL_KEYS:
                continue
            try:
                values[key] = known[key].metadata["parse"](value)
            except ValueError as exc:
                errors.append(f"--conf {key} {value!r}: {exc}")
        if errors:
            raise ConfError("; ".join(errors))
        return cls(**values, explicit=frozenset(values))

    def with_updates(self, updates: Mapping[str, Any]) -> AppConfig:
        """A copy with some keys replaced; values are parsed and validated like ``--conf`` values."""
        known = {f.name: f for f in dataclasses.fields(self) if "parse" in f.metadata}
        values: dict[str, Any] = {}
        errors = []
        for key, value in updates.items():
            if key not in known:
                raise ConfError(f"unknown setting {key!r}; known: {', '.join(known)}")
            try:
                values[key] = known[key].metadata["parse"](str(value))
            except ValueError as exc:
                errors.append(f"{key}={value!r}: {exc}")
        if errors:
            raise ConfError("; ".join(errors))
        return dataclasses.replace(self, **values)

    def strategy_settings(self) -> dict[str, Any]:
        """The admin-editable strategy settings (persisted with the study set)."""
        return {k: getattr(self, k) for k in STRATEGY_KEYS}

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.conf_keys()}


def conf_table_markdown() -> str:
    """The README table of every ``--conf`` key with its default."""
    rows = ["| key | default | meaning |", "| --- | --- | --- |"]
    for f in dataclasses.fields(AppConfig):
        if "parse" not in f.metadata:
            continue
        default = f.default
        shown = "(empty)" if default == "" else str(default).lower() if isinstance(default, bool) else str(default)
        rows.append(f"| `{f.name}` | `{shown}` | {f.metadata['help']} |")
    return "\n".join(rows) + "\n"


CONF_DOC_HEADER = """# App settings (`--conf KEY VALUE`)

Given to `neolabel serve` (or `monailabel start_server --app neonatal_app`) as `--conf KEY VALUE`, repeatable.
Every key is parsed once at start into `strategies.annotate.settings.AppConfig`; an unknown key or a bad value stops the
start with a message naming the key. The `budget_*`, `seed` and `lease_minutes` settings persist with the study set
(`<studies>/.neolabel/annotation.db`): a key given with `--conf` overrides the stored value, otherwise the stored value
(last edited by an admin, e.g. in the Slicer options table of the `budget` strategy) is used.
Generated by `python -m strategies.annotate.settings > docs/CONF.md`.

"""


def conf_doc() -> str:
    return CONF_DOC_HEADER + conf_table_markdown()


if __name__ == "__main__":
    print(conf_doc(), end="")
