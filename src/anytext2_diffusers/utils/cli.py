"""One command-line convention for every tool: a dataclass of options -> an argparse parser.

Each field made with :func:`option` becomes ``--name`` (booleans ``--name`` / ``--no-name``) with its help
text and one shown default; ``# --- section ---`` comments in the dataclass body become argument groups
(and the section headings of the generated docs tables). Parsers never accept abbreviations
(``--max_train_step`` is an error, not ``--max_train_steps``) and report a bad value with one
``prog: error: ...`` line instead of the whole usage. Nothing here imports torch: ``--help`` and
configuration errors answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import re
import sys
from dataclasses import field, fields


def option(default, help: str, **argparse_kw):
    """A dataclass field whose metadata becomes its argparse options (``type``, ``nargs``, ``choices``,
    ``metavar``)."""
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda d=default: list(d), metadata=dict(help=help, **argparse_kw))
    return field(default=default, metadata=dict(help=help, **argparse_kw))


class ArgumentParser(argparse.ArgumentParser):
    """``allow_abbrev=False``; errors are one line (the usage of a long option list would bury them)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def field_default(f: dataclasses.Field):
    return f.default if f.default is not dataclasses.MISSING else f.default_factory()


def sections(cls) -> dict[str, str]:
    """Field name -> the ``# --- name ---`` comment above it in the dataclass body ("options" before any)."""
    section_of = {}
    for klass in reversed([k for k in cls.__mro__ if dataclasses.is_dataclass(k)]):  # inherited fields too
        current = "options"
        for line in inspect.getsource(klass).splitlines():
            heading = re.match(r"\s+# --- (.+?) -+$", line)
            if heading:
                current = heading.group(1)
                continue
            name = re.match(r"\s+(\w+): .*= (?:option|_opt)\(", line)
            if name:
                section_of[name.group(1)] = current
    return section_of


def help_with_default(help_text: str, default) -> str:
    """The help text and its default, shown once (a help text that already explains its default keeps it)."""
    if "default" in help_text.lower() or "(required)" in help_text:
        return help_text
    shown = "none" if default is None else default
    return f"{help_text} (default: {shown})"


_METAVARS = {int: "N", float: "X", str: "STR"}


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls, *, skip=(), defaults: bool = True) -> None:
    """One option per field of ``cls``, in argument groups by section. ``defaults=False`` leaves
    unspecified options out of the namespace (``argparse.SUPPRESS``), so a YAML file can fill them."""
    groups: dict[str, argparse._ArgumentGroup] = {}
    section_of = sections(cls)
    for f in fields(cls):
        if f.name in skip or "help" not in f.metadata:
            continue
        meta = dict(f.metadata)
        help_text = meta.pop("help")
        default = field_default(f)
        section = section_of.get(f.name, "options")
        group = groups.get(section)
        if group is None:
            group = groups[section] = parser.add_argument_group(section)
        help_text = help_with_default(help_text, default)
        if isinstance(default, bool):
            # created without a default: some Python versions append their own "(default: ...)" then
            action = group.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, help=help_text)
        else:
            meta.setdefault("type", type(default) if default is not None else str)
            if "choices" not in meta:
                meta.setdefault("metavar", _METAVARS.get(meta["type"], "VALUE"))
            action = group.add_argument(f"--{f.name}", help=help_text, **meta)
        action.default = default if defaults else argparse.SUPPRESS


def options_markdown(cls) -> str:
    """Markdown tables of the options of ``cls`` by section (docs stay in step with the parser)."""
    section_of = sections(cls)
    out, last = [], None
    for f in fields(cls):
        if "help" not in f.metadata:
            continue
        section = section_of.get(f.name, "options")
        if section != last:
            out += [
                "",
                f"**{section[0].upper() + section[1:]}**",
                "",
                "| option | default | meaning |",
                "| --- | --- | --- |",
            ]
            last = section
        default = field_default(f)
        flag = f"`--{f.name}` / `--no-{f.name}`" if isinstance(default, bool) else f"`--{f.name}`"
        help_text = f.metadata["help"].replace("|", "\\|")
        out.append(f"| {flag} | `{default}` | {help_text} |")
    return "\n".join(out).strip() + "\n"


def from_namespace(cls, namespace: argparse.Namespace, **extra):
    """``cls`` built from the parsed options that are its fields (+ ``extra``)."""
    names = {f.name for f in fields(cls)}
    values = {k: v for k, v in vars(namespace).items() if k in names}
    values.update(extra)
    return cls(**values)


def rewrite_deprecated(argv, renames: dict[str, str], prog: str) -> list[str]:
    """Old spellings of options -> the current ones, each with a one-line deprecation message on stderr.
    ``renames`` maps an old flag to its replacement (``--out`` -> ``--output_dir``; ``--public`` ->
    ``--no-hub_private``); an old flag that took a value keeps it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    out = []
    for arg in argv:
        flag, sep, value = arg.partition("=")
        if flag in renames:
            sys.stderr.write(f"{prog}: warning: {flag} is deprecated; use {renames[flag]}\n")
            out.append(renames[flag] + (sep + value if sep else ""))
        else:
            out.append(arg)
    return out
