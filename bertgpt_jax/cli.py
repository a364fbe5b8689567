"""Command-line flags generated from config dataclasses: one name, one default and one help text per setting.

A config class declares each setting once with :func:`setting`; :func:`define_flags` turns its fields into
absl flags of the same names (with the original BERT scripts' names as aliases where they differ), and
:func:`from_flags` builds the dataclass back from parsed flags. The CLI and a notebook that constructs the
dataclass therefore get the same run from "the defaults".
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from typing import Any, Callable, Sequence

from absl import app, flags

UsageError = app.UsageError


def setting(default: Any, help: str, *, choices: Sequence[str] | None = None, aliases: Sequence[str] = (),
            required: bool = False) -> Any:
    """A dataclass field that is also a flag. ``aliases`` are other flag names for it (the original
    scripts' names); ``required`` settings have no usable default and must be given."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": tuple(choices or ()),
                                                        "aliases": tuple(aliases), "required": required})


def _base_type(tp) -> tuple[type, bool]:
    """(the type a flag parses to, whether None is allowed)."""
    args = typing.get_args(tp)
    if type(None) in args:
        (inner,) = [a for a in args if a is not type(None)]
        return inner, True
    return tp, False


def define_flags(*config_classes: type, flag_values: flags.FlagValues = flags.FLAGS,
                 module_name: str | None = None) -> None:
    """Defines one flag per field of each dataclass (skipping those already defined by an earlier class),
    as flags of ``module_name`` (default: the calling module, whose ``--helpshort`` then lists them)."""
    module_name = module_name or sys._getframe(1).f_globals["__name__"]
    if module_name == "__main__":  # absl names the main module by its path
        module_name = sys.argv[0]
    kw = dict(flag_values=flag_values, module_name=module_name)
    for cls in config_classes:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in flag_values:
                continue
            tp, _ = _base_type(hints[f.name])
            help_text = f.metadata.get("help", "")
            if f.metadata.get("required"):
                help_text += " (required)"
            choices = f.metadata.get("choices") or ()
            default = f.default
            if typing.get_origin(tp) is tuple:
                flags.DEFINE_list(f.name, None if default is None else [str(x) for x in default], help_text, **kw)
            elif choices:
                flags.DEFINE_enum(f.name, default, list(choices), help_text, **kw)
            elif tp is bool:
                flags.DEFINE_bool(f.name, default, help_text, **kw)
            elif tp is int:
                flags.DEFINE_integer(f.name, default, help_text, **kw)
            elif tp is float:
                flags.DEFINE_float(f.name, default, help_text, **kw)
            elif tp is str:
                flags.DEFINE_string(f.name, default, help_text, **kw)
            else:
                raise TypeError(f"{cls.__name__}.{f.name}: no flag type for {tp}")
            for alias in f.metadata.get("aliases", ()):
                define = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer, float: flags.DEFINE_float}.get(
                    tp, flags.DEFINE_string)
                define(alias, None, f"Alias of --{f.name} (the original scripts' name).", **kw)


def _convert(name: str, tp, raw):
    if typing.get_origin(tp) is tuple:
        element_types = typing.get_args(tp)
        fixed = Ellipsis not in element_types
        element = element_types[0]
        try:
            values = tuple(element(x) for x in raw)
        except ValueError:
            raise UsageError(f"--{name}={','.join(raw)} must be a comma-separated list of {element.__name__}") from None
        if fixed and len(values) != len(element_types):
            raise UsageError(f"--{name}={','.join(raw)} must have {len(element_types)} entries")
        return values
    return raw


def from_flags(cls: type, flag_values: flags.FlagValues = flags.FLAGS):
    """An instance of ``cls`` from parsed flags; ``UsageError`` on a missing setting or disagreeing aliases."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        value = flag_values[f.name].value
        given = f"--{f.name}"
        for alias in f.metadata.get("aliases", ()):
            other = flag_values[alias].value
            if other is None:
                continue
            if flag_values[f.name].present and other != value:
                raise UsageError(f"--{f.name}={value} and its alias --{alias}={other} disagree; pass one of them")
            value, given = other, f"--{alias}"
        if f.metadata.get("required") and value in (None, ""):
            aliases = f.metadata.get("aliases", ())
            alias_text = f" (or {' or '.join(f'--{a}' for a in aliases)})" if aliases else ""
            raise UsageError(f"--{f.name}{alias_text} is required")
        tp, _ = _base_type(hints[f.name])
        values[f.name] = None if value is None else _convert(given.lstrip("-"), tp, value)
    return cls(**values)


def flag_defaults(cls: type, flag_values: flags.FlagValues) -> dict[str, Any]:
    """Each field's flag default, converted as :func:`from_flags` converts values (for drift checks)."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        default = flag_values[f.name].default
        tp, _ = _base_type(hints[f.name])
        out[f.name] = None if default is None else _convert(f.name, tp, default)
    return out


def run(main: Callable[[list[str]], Any], user_errors: tuple[type[BaseException], ...] = (ValueError,)) -> None:
    """``absl.app.run(main)``, where an error of the user's (``user_errors``, ``UsageError``) prints its
    message alone and exits with status 2; ``--help`` exits with status 0."""

    def wrapped(argv):
        try:
            return main(argv)
        except UsageError as e:
            print(f"{_program_name()}: error: {e}\n(--helpshort lists the flags)", file=sys.stderr, flush=True)
            sys.exit(2)
        except user_errors as e:
            print(f"{_program_name()}: error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)

    try:
        app.run(wrapped)
    except SystemExit as e:
        if e.code == 1 and any(a in ("--help", "--helpshort", "--helpfull", "-h", "-?") for a in sys.argv[1:]):
            sys.exit(0)
        raise


def _program_name() -> str:
    main = sys.modules.get("__main__")
    spec = getattr(main, "__spec__", None)
    return spec.name.rsplit(".", 1)[-1] if spec is not None and spec.name else "bertgpt_jax"
