"""Command-line flags generated from typed configurations, so that each option is declared once.

A :class:`Flag` is one option as typer sees it; :func:`with_flags` gives a command function generated
flags next to its own parameters. Two sources use it: ``enrich train``, ``add-heads`` and ``evaluate`` (the
fields of ``models.training.config``'s ``TrainConfig``, ``AddHeadsConfig``, ``EvaluateConfig``, through
:func:`train_flags`) and the service commands ``enrich run``,
``check-config`` and ``replay`` (the fields of :class:`consumer.ops.settings.Settings`, through
:func:`settings_flags`, whose values :func:`settings_overrides` turns back into Settings' keyword arguments).
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import typer


@dataclass(frozen=True)
class Flag:
    """One generated option: the parameter ``name`` and its declarations (``--name``, ``-n``, ``--on/--off``)."""

    name: str
    decls: tuple[str, ...]
    type: Any
    default: Any = None
    help: str = ""
    required: bool = False
    metavar: str | None = None
    panel: str | None = None


def _plain(text: str) -> str:
    """Help text shown as written: with rich markup on (typer's default), ``[the default]`` would be taken
    for a style tag and vanish."""
    import typer.core

    if typer.core.DEFAULT_MARKUP_MODE != "rich":
        return text
    from rich.markup import escape

    return escape(text)


def parameters(flags: Iterable[Flag]) -> list[inspect.Parameter]:
    """typer parameters (keyword-only, ``Annotated[type, typer.Option(...)]``) for the flags."""
    out = []
    for f in flags:
        typ = f.type if f.required or f.default is not None else f.type | None
        option = typer.Option(*f.decls, help=_plain(f.help), metavar=f.metavar, rich_help_panel=f.panel,
                              show_default=f.default is not None and f.type is not bool)
        out.append(inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[typ, option],
                                     default=inspect.Parameter.empty if f.required else f.default))
    return out


def with_flags(flags: Sequence[Flag], *, into: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a command so that typer sees its own parameters followed by ``flags``.

    With ``into="name"``, the generated flags' values reach the command as one dict argument ``name``
    (its own parameters stay as they are); without, they are passed as keyword arguments.
    """

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        hints = typing.get_type_hints(func, include_extras=True)
        own = [p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=hints.get(p.name, p.annotation))
               for p in inspect.signature(func).parameters.values()
               if p.name != into and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        generated = parameters(flags)
        clash = {p.name for p in own} & {p.name for p in generated}
        if clash:
            raise ValueError(f"{func.__name__}: parameters declared twice: {sorted(clash)}")
        names = [f.name for f in flags]

        @functools.wraps(func)
        def command(**kwargs: Any) -> Any:
            if into is not None:
                kwargs[into] = {n: kwargs.pop(n) for n in names}
            return func(**kwargs)

        params = own + generated
        command.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in params} | {"return": None}
        del command.__wrapped__  # typer must read the new signature, not func's
        return command

    return decorate


# --------------------------------------------------------------------------- enrich train (TrainConfig)
def train_flags(options: Iterable[Any], required: Sequence[str] = ()) -> list[Flag]:
    """Flags from ``models.training.config.options(...)`` (name, flag, type name, default, help, metavar);
    ``required`` names the options that have no default on the command line."""
    types: dict[str, Any] = {"int": int, "float": float, "str": str, "bool": bool, "list[str]": list[str]}
    flags = []
    for o in options:
        typ = types[o.type]
        flags.append(Flag(
            name=o.name,
            decls=(f"{o.flag}/--no-{o.flag[2:]}" if typ is bool else o.flag,),
            type=typ,
            default=None if o.name in required else o.default,
            help=o.help[:1].upper() + o.help[1:] + ".",
            required=o.name in required,
            metavar=None if typ is bool else o.metavar or o.type.removeprefix("list[").strip("]").upper(),
        ))
    return flags


# --------------------------------------------------------------------------- the service (Settings)
SETTINGS_PANEL = "Settings (each also an ENRICH_* environment variable; a flag wins)"
_SECTION_PANELS = {"fetch": "Image downloads (ENRICH_FETCH__*)", "batch": "Micro-batches (ENRICH_BATCH__*)"}


def _cli_marker(field: Any) -> Any:
    from consumer.ops.settings import Cli

    return next((m for m in field.metadata if isinstance(m, Cli)), Cli())


def _flag_type(annotation: Any) -> tuple[Any, str | None]:
    """The flag's Python type for a field's annotation, and the choices of a Literal."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType) and len(args) == 1:
        return _flag_type(args[0])
    if origin is Literal:
        return str, " | ".join(map(str, args))
    if origin is dict or origin is list:
        return list[str], None
    if annotation in (bool, int, float, str, Path):
        return annotation, None
    raise TypeError(f"no flag type for {annotation!r}")


def _settings_fields() -> Iterable[tuple[str, str, Any, Any]]:
    """(parameter name, flag stem, field, section) of every Settings field that has a flag, in order."""
    from consumer.ops.settings import Settings, _section

    for name, field in Settings.model_fields.items():
        section = _section(field)
        if section is None:
            yield name, name, field, None
            continue
        for sub, sub_field in section.model_fields.items():
            yield f"{name}__{sub}", f"{name}_{sub}", sub_field, name


def settings_flags(exclude: Iterable[str] = (), only: Iterable[str] | None = None) -> list[Flag]:
    """A flag for every setting (nested ones as ``--<section>-<name>``; ``only`` these parameter names when
    given), secrets and ``exclude`` left out.

    Flags default to None (not given: the environment or the field's default applies), so the help shows
    the field's default and its environment variable in the text instead.
    """
    from consumer.ops.settings import ENV_PREFIX

    skip, keep = set(exclude), None if only is None else set(only)
    flags = []
    for param, stem, field, section in _settings_fields():
        cli = _cli_marker(field)
        if cli.hidden or param in skip or (keep is not None and param not in keep):
            continue
        typ, _choices = _flag_type(field.annotation)
        flag = cli.flag or "--" + stem.replace("_", "-")
        decls = (f"{flag}/{cli.off or '--no-' + flag[2:]}",) if typ is bool else (flag,)
        default = field.get_default(call_default_factory=True)
        shown = "" if default in (None, {}, []) or typ is bool else f" [{default}]"
        env = ENV_PREFIX + param.upper()
        flags.append(Flag(
            name=param,
            decls=decls + ((cli.short,) if cli.short else ()),
            type=typ,
            help=f"{field.description or ''}{shown} [env: {env}]".strip(),
            metavar=cli.metavar or (None if typ is bool else "TEXT" if typ is list[str] else None),
            panel=_SECTION_PANELS.get(section or "", SETTINGS_PANEL),
        ))
    return flags


def settings_command(
    app: typer.Typer, name: str, *, exclude: Iterable[str] = (), only: Iterable[str] | None = None
) -> Callable[[Callable[..., Any]], Any]:
    """``@app.command(name)`` with the settings' flags (:func:`settings_flags`), their values passed to the
    command as the dict ``flags``. In the base install (no pydantic-settings: subscribers) the command still
    exists and says which extra it needs (``enrich.cli.main`` turns the ModuleNotFoundError into that)."""

    def decorate(func: Callable[..., Any]) -> Any:
        try:
            flags = settings_flags(exclude=exclude, only=only)
        except ModuleNotFoundError as exc:
            missing = exc

            def needs_extra(ctx: typer.Context) -> None:
                raise missing

            needs_extra.__doc__ = func.__doc__
            return app.command(name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                                       "help_option_names": []})(needs_extra)
        return app.command(name)(with_flags(flags, into="flags")(func))

    return decorate


def _key_values(pairs: Sequence[str], flag: str) -> dict[str, str]:
    parsed: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise typer.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=flag)
        parsed[key.strip()] = value
    return parsed


def settings_overrides(values: Mapping[str, Any]) -> dict[str, Any]:
    """The flags given (not None), as Settings' keyword arguments: ``fetch__max_bytes`` -> ``{"fetch": {...}}``,
    ``-X k=v`` -> ``{"kafka": {"k": "v"}}``. Sections merge with the environment's (pydantic-settings)."""
    from consumer.ops.settings import Settings

    out: dict[str, Any] = {}
    for name, value in values.items():
        if value is None or value == []:
            continue
        section, _, sub = name.partition("__")
        if not sub and typing.get_origin(Settings.model_fields[name].annotation) is dict:
            value = _key_values(value, _cli_marker(Settings.model_fields[name]).flag or f"--{name}")
        if sub:
            out.setdefault(section, {})[sub] = value
        else:
            out[name] = value
    return out
