"""Flag parsing for the entry points, with one-line errors for bad command lines.

With `app.run(main, flags_parser=parse_flags)`, an entry point reports each of these in one
error line that names the flag and the fix, followed by absl's hint about --helpshort, and exits
with status 1:

- an override of a config field that does not exist (`--config.model.num_kv_head=2`), which
  ml_collections 1.1 reports as a chained traceback with the closest name on its last line;
- an override whose value does not parse as the field's type (`--config.num_train_steps=1.5`);
- a config file that fails to load or rejects its `:KIND` suffix, which ml_collections reports
  with the config file's traceback inside the message;
- positional arguments, which no entry point takes.

Other absl flag errors (unknown flags, missing required flags) keep absl's message. The config
flag must be named `config` and defined with `config_flags.DEFINE_config_file`.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

import ml_collections
from absl import flags

CONFIG_FLAG = "config"
_CONFIG_FILE_ERROR = "Error whilst parsing config file"
_CONFIG_LOAD_ERROR = "Failed loading config file"


class CommandLineError(flags.Error):
    """An invalid command line: bad flag value, unknown config field, extra arguments."""


def parse_flags(argv: list[str]) -> list[str]:
    """Parse `argv` into absl's FLAGS for `app.run`, or exit with status 1 and a one-line message.

    Like absl's default parser, it writes the message to stderr and exits, which SystemExit does.
    """
    try:
        return parse_command_line(argv)
    except CommandLineError as err:
        raise SystemExit(
            f"FATAL Flags parsing error: {err}\nPass --helpshort or --helpfull to see help on flags."
        ) from None


def parse_command_line(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """Parse `argv` into `flag_values` and return [program name].

    Raises CommandLineError with a one-line message for every bad flag and for positional
    arguments.
    """
    try:
        remaining = flag_values(argv)
    except flags.Error as err:
        raise CommandLineError(_describe_flag_error(str(err), flag_values)) from err
    except (KeyError, AttributeError) as err:
        # ml_collections raises these for an override of a field that the config lacks.
        message = _describe_unknown_override(argv, flag_values)
        if message is None:
            raise
        raise CommandLineError(message) from err
    except OSError as err:
        # ml_collections raises the load error of a config file at the config's first use, and
        # an override is one.
        if _CONFIG_LOAD_ERROR not in str(err):
            raise
        raise CommandLineError(_describe_load_error(err)) from err
    _check_config_loaded(flag_values)
    if len(remaining) > 1:
        raise CommandLineError(
            f"Unexpected positional arguments {remaining[1:]}: this program takes only flags, "
            "so write each option as --name=value, for example --config.seed=1."
        )
    return remaining


def describe_unknown_field(config: ml_collections.ConfigDict, path: str) -> str | None:
    """Return an error message naming the first part of the dotted `path` that `config` lacks.

    The message suggests the closest field names at that level, or lists them all. Returns None
    if every part of `path` exists.
    """
    node, parent = config, CONFIG_FLAG
    for key in path.split("."):
        field = f"{parent}.{key}"
        where = "" if field == f"{CONFIG_FLAG}.{path}" else f" in --{CONFIG_FLAG}.{path}"
        if not isinstance(node, ml_collections.ConfigDict):
            return (
                f"Unknown config field --{field}{where}: {parent} is a value of type "
                f"{type(node).__name__}, not a group of fields; override --{parent} itself."
            )
        if key not in node:
            names = sorted(node.keys())
            close = difflib.get_close_matches(key, names, n=3)
            if close:
                hint = "did you mean " + " or ".join(f"--{parent}.{name}" for name in close) + "?"
            else:
                hint = f"valid fields of {parent}: {', '.join(names)}."
            return f"Unknown config field --{field}{where}: {hint}"
        node, parent = node[key], field
    return None


def _describe_flag_error(message: str, flag_values: flags.FlagValues) -> str:
    """Shorten or extend absl's message for errors of the config flag and its overrides."""
    match = re.match(r"flag --([\w.]+)=", message)
    if match is None:
        return message
    name = match.group(1)
    if name == CONFIG_FLAG and _CONFIG_FILE_ERROR in message:
        return _describe_config_file_error(message)
    if name.startswith(CONFIG_FLAG + "."):
        return _describe_override_type_error(message, name[len(CONFIG_FLAG) + 1 :], flag_values)
    return message


def _describe_config_file_error(message: str) -> str:
    """Keep the flag and the last line of the config file's traceback: its exception message."""
    value = message[len(f"flag --{CONFIG_FLAG}=") : message.index(f": {_CONFIG_FILE_ERROR}")]
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return f"--{CONFIG_FLAG}={value} failed to load: {lines[-1]}"


def _describe_override_type_error(message: str, path: str, flag_values: flags.FlagValues) -> str:
    """Add the type that the overridden field takes, and the value the config file gives it."""
    config = flag_values[CONFIG_FLAG].value
    *parents, field = path.split(".")
    holder = config
    for key in parents:
        holder = holder[key]
    expected = holder.get_type(field).__name__
    current = holder[field]
    hint = f"--{CONFIG_FLAG}.{path} takes a value of type {expected}"
    if current is not None:
        hint += f", such as the config file's {current!r}"
    return f"{message.rstrip('.')}. {hint}."


def _describe_unknown_override(argv: Sequence[str], flag_values: flags.FlagValues) -> str | None:
    """Find the override in `argv` that names a field the config lacks, and describe it."""
    argv = flag_values.read_flags_from_files(list(argv), force_gnu=False)
    config_file = _config_argument(argv)
    if config_file is None:
        return None
    config = flag_values[CONFIG_FLAG].parser.parse(config_file)
    for path in _override_paths(argv):
        message = describe_unknown_field(config, path)
        if message is not None:
            return message
    return None


def _config_argument(argv: Sequence[str]) -> str | None:
    """Return the value of the last --config flag in `argv`, as `--config=V` or `--config V`."""
    value = None
    for i, arg in enumerate(argv):
        if re.match(rf"^--?{CONFIG_FLAG}=", arg):
            value = arg.split("=", 1)[1]
        elif re.match(rf"^--?{CONFIG_FLAG}$", arg) and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _override_paths(argv: Sequence[str]) -> list[str]:
    """Return the field paths of `--config.PATH=V` and `--[no]config.PATH` overrides."""
    paths = []
    for arg in argv:
        match = re.match(rf"^--?(?:no)?{CONFIG_FLAG}\.([^=]+)", arg)
        if match is not None:
            paths.append(match.group(1))
    return paths


def _check_config_loaded(flag_values: flags.FlagValues) -> None:
    """Raise CommandLineError if the config file failed to load without an override touching it."""
    if CONFIG_FLAG not in flag_values:
        return
    config = flag_values[CONFIG_FLAG].value
    if config is None or isinstance(config, ml_collections.ConfigDict):
        return
    try:
        # A config that failed to load raises OSError on any attribute access.
        config.keys()
    except OSError as err:
        if _CONFIG_LOAD_ERROR not in str(err):
            raise
        raise CommandLineError(_describe_load_error(err)) from err


def _describe_load_error(err: OSError) -> str:
    """Return the reason why the config file failed to load, from the last line of the error."""
    reason = str(err).strip().splitlines()[-1].strip()
    return (
        f"Failed to load the --{CONFIG_FLAG} file: {reason}. Pass --{CONFIG_FLAG}=PATH[:KIND] "
        "with an existing config file, such as configs/shakespeare.py:mla."
    )
