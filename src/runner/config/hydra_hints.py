"""Hydra's refusals said the runner's way: one line that names the override and the fix,
where Hydra explains over several lines or names neither."""

from __future__ import annotations

import re
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import yaml
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import OverrideParseException

from runner.config.check import CONFIGS, GROUPS, NOT_GLOBAL, did_you_mean

DIRS = {"hydra.run.dir": "run", "hydra.sweep.dir": "sweep"}
SWEEP_FUNCTIONS = {"choice", "range", "interval", "tag", "glob", "sort", "shuffle"}  # Hydra's
VALUED = ("-c", "-p", "-i", "-cp", "-cn", "-cd")  # flags that take a value (`-cd dir`)
VALUED += ("--cfg", "--package", "--info", "--config-path", "--config-name", "--config-dir")
FLAGS = VALUED + ("--help", "--hydra-help", "--version", "--run", "--multirun", "--resolve")
FLAGS += ("--shell-completion", "--experimental-rerun", "-h", "-r", "-m", "-sc")  # 1.3's, 1.4's


def flag_hint(args: Sequence[str], intermixed: bool) -> str | None:
    """A flag argparse would answer with its usage (a long one it does not know, or in 1.3 one
    between overrides), or an empty run or sweep dir, which Hydra takes as the cwd."""
    # `-cd dir`: dir is no override; `--info` takes a value only if one of its own follows
    values = {i + 1 for i, a in enumerate(args) if a in VALUED and not bare_info(args, i)}
    overrides = [i for i, a in enumerate(args) if i not in values and a[:1] not in "-" and "=" in a]
    for i, arg in enumerate(args):
        name = arg.partition("=")[0]
        if name.startswith("--") and not any(flag.startswith(name) for flag in FLAGS):
            return f"{arg} is no flag of the runner's; python -m runner --help lists them"
        known = name in FLAGS  # exactly: `-mc` may be `-m -c`, argparse's to judge
        if known and not intermixed and overrides and overrides[0] < i < overrides[-1]:
            flag = f"{arg} {args[i + 1]}" if i + 1 in values else arg  # `--cfg job`
            flag += " all" if bare_info(args, i) else ""  # else it would take an override
            return (
                f"{arg}: hydra-core 1.3 takes its flags before the overrides: "
                f"python -m runner {flag} ... <overrides>"
            )
    for i in overrides:  # `hydra.run.dir=$OUT` with OUT unset: Hydra writes into the cwd
        key, _, value = args[i].partition("=")
        if key in DIRS and value.strip("'\" ") == "":
            return f"{args[i]}: {key} is empty; give a directory, such as {key}=outputs/mine"
    return None


def yaml_error(error: Exception) -> str | None:
    """A config file that is no YAML (a key indented off its siblings, a key given twice),
    which OmegaConf raises with PyYAML's traceback: the file, the line and the fault."""
    if not isinstance(error, yaml.MarkedYAMLError) or error.problem_mark is None:
        return None
    mark, context = error.problem_mark, error.context_mark
    where = f"{mark.name}, line {mark.line + 1}, column {mark.column + 1}"
    since = f" {error.context} from line {context.line + 1}" if context and error.context else ""
    if isinstance(error, yaml.constructor.ConstructorError):
        return f"{where}: {error.problem}{since}; a mapping holds each key once"
    return (
        f"{where}: {error.problem}{since}; YAML nests keys by their indentation, so the keys "
        "of one mapping start in the same column"
    )


def bare_info(args: Sequence[str], i: int) -> bool:
    """Whether `args[i]` is `--info` (`-i`) with no value of its own after it (all, config, ...)."""
    choices = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")
    return args[i] in ("--info", "-i") and (i + 1 == len(args) or args[i + 1] not in choices)


def sweeper_params(error: Exception, args: Sequence[str]) -> str | None:
    """`hydra.sweeper.params.optimizer.lr=...`, a key with dots Hydra cannot reach, and
    `hydra.sweeper.params={...}`, which OmegaConf cannot merge into the grid's null."""
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "hydra.sweeper.params" and key in str(error):
            return (
                f"{arg}: the sweep's values are overrides of their own (seed=1,2 "
                "optimizer.lr=0.1,0.2), or a config's hydra.sweeper.params (an hparams_search "
                "option)"
            )
        if key.startswith("hydra.sweeper.params.") and key in str(error):
            search = f"{key.removeprefix('hydra.sweeper.params.')}={value}"
            return (
                f"{arg}: the keys of hydra.sweeper.params have dots in them, so it cannot "
                f"reach them; give the search as an override of its own: '{search}'"
            )
    return None


def plus_group(error: Exception, args: Sequence[str]) -> str | None:
    """`+optimizer=adam` or `++optimizer=adam` for a group the config has an option of: Hydra
    speaks of a defaults list the user never wrote, or of force-adding."""
    first = (str(error).splitlines() or [""])[0]
    for arg in args:
        plus, key = len(arg) - len(arg.lstrip("+")), arg.lstrip("+").partition("=")[0]
        refusal = (f"Multiple values for {key}.", "force-add of config groups is not supported")
        if plus and key and first.startswith(refusal) and key in first:
            return (
                f"{arg}: {key} is a config group the config lists already; choose its option "
                f"without +: {arg[plus:]}"
            )
    return None


def defaults_hint(error: Exception) -> str | None:
    """A defaults list entry of an experiment that names its group the wrong way (misspelt,
    without the leading `/`, without `override`): Hydra's line says what it could not find."""
    text = str(error)
    if text.startswith("Invalid defaults list in '"):  # `defaults:` then `  optimizer: adam`
        return (
            f"{text.partition(',')[0]}: its entries are list items, one a line "
            "('- override /optimizer: adam')"
        )
    found = re.match(r"In '([^']+)': Could not (override|find) '([^']+)'", text)
    if found is None:  # hydra-core 1.4's words
        override = r"In '([^']+)': Invalid Defaults List (override) '.*'\.\s+"
        found = re.match(override + r"No earlier Group Default for '([^']+)'", text)
    if found is None:
        return None
    where, verb, name = found.groups()
    parent = where.partition("/")[0] + "/"  # `experiment/`: a group read inside its own
    group, _, option = name.removeprefix(parent).partition("@")[0].partition("/")
    if group in GROUPS and name.startswith(parent):
        return (
            f"In '{where}': an experiment picks another option of a group of the whole config "
            f"with a leading / and override: '- override /{group}: {option or '<option>'}'"
        )
    if verb == "override" and group not in GROUPS:
        return (
            f"In '{where}': '- override /{group}: ...' names no config group"
            f"{did_you_mean(group, GROUPS)}; the groups are {', '.join(GROUPS)}"
        )
    return None


def hydra_hint(error: Exception) -> str | None:
    """Refusals Hydra explains over several lines, each as one: `+key` for a key the config
    has, `~key` for one absent or null, a sweep's values or search without -m, ..."""
    first, *_ = str(error).splitlines() or [""]
    quoted = first.partition("'")[2].partition("'")[0]  # a key, a file, an override
    if first.startswith("Could not delete from config. '") and "does not exist" in first:
        return (
            f"~{quoted}: Hydra deletes only a key that holds a value, and {quoted} is null or not "
            "in the config (spelled right?); a null setting is off already: leave the override out"
        )
    if first.startswith("Could not append to config. An item is already at '"):
        return (
            f"+{quoted}: the config has {quoted} already, and + adds only a key it lacks; "
            f"set it with {quoted}=... (or ++{quoted}=..., which sets or adds)"
        )
    if first.startswith("In 'experiment/") and "@experiment." in str(error):  # no @package
        return NOT_GLOBAL.format("experiment", quoted.removeprefix("experiment/"))
    if first.startswith("Multiple values for ") and first.count("'") == 2:  # a defaults list
        group = first.removeprefix("Multiple values for ").partition(".")[0]
        return (
            f"a defaults list chooses {group} twice; an experiment picks another option with "
            f"'- override /{group}: {quoted.rpartition(': ')[2]}'"
        )
    if first.startswith("Sweep parameters '"):  # `optimizer.lr=interval(0.1, 1)` without -m
        return f"{quoted} is a search, one value per job: add -m"
    if first.startswith("Ambiguous value for argument '"):
        override = first.split("'", 1)[1].rstrip("'")
        key, _, value = override.partition("=")
        # a config group's option (`optimizer=gd,adam`) is neither a list nor a string
        other = f"; for a list write {key}=[{value}], for a string '{key}=\"{value}\"'"
        sweep = f"{override}: a comma-separated value is a sweep, one job per value: add -m"
        return sweep + (other if "." in key else "")
    return None


def group_value(error: Exception, args: Sequence[str]) -> str | None:
    """`experiment=null` or `logger=` (Hydra's ValueError, with a traceback): a config group
    takes one of its options by name."""
    if not str(error).startswith("Config group override must be a string or a list"):
        return None
    for arg in args:
        key, _, value = arg.lstrip("+").partition("=")
        options = group_options(key, config_dirs(args)) if key else []
        if not key or (options and value in ("", "null")):
            off = f"; {key}=none leaves it out" if "none" in options else ""
            pick = f"{key} takes one of its options by name ({', '.join(options)}){off}"
            return f"{arg}: " + (pick if key else "an override is key=value")
        if not options or isinstance(parsed_value(arg), str):
            continue  # not the one Hydra refused: a group's option is a string
        if value in options:  # `experiment=2024`: read as a number
            return f"{arg}: {value} reads as a number or true/false; quote it: '{key}=\"{value}\"'"
        return f"{arg}: {value} is no option of {key}; {key} has: {', '.join(options)}"
    return None


def parsed_value(override: str) -> object:
    """An override's value as Hydra reads it (`2024` an int); None where it cannot."""
    try:
        return OverridesParser.create().parse_override(override).value()
    except Exception:  # not Hydra's syntax: some other line says so
        return None


def group_options(group: str, own: Sequence[Path] = ()) -> list[str]:
    """A group's options as Hydra finds them (the runner's, its plugins') and in `own` dirs."""
    theirs = {p.stem for d in own for p in (d / group).glob("*.yaml")}
    ready = GlobalHydra.instance().is_initialized()  # within a run, as `compose` leaves it
    with nullcontext() if ready else initialize_config_dir(str(CONFIGS), version_base=None):
        found = GlobalHydra.instance().config_loader().get_group_options(group)
    return sorted({*found, *theirs})


def config_dirs(args: Sequence[str]) -> list[Path]:
    """The directories of `--config-dir dir` (`-cd dir`, `--config-dir=dir`) on the command line."""
    dirs = []
    for i, arg in enumerate(args):
        flag, equals, value = arg.partition("=")
        if flag in ("--config-dir", "-cd"):
            value = value if equals else (args[i + 1] if i + 1 < len(args) else "")
            dirs.append(Path(value))
    return dirs


def run_dir_hint(error: OSError, args: Sequence[str]) -> str | None:
    """A run or sweep dir Hydra cannot make (a file in the way): its OSError, a traceback."""
    if error.filename is None:
        return None
    for arg in args:
        key, _, value = arg.partition("=")
        made = Path(value.strip("'\"")).absolute()  # with its parents: the error names one
        named = Path(error.filename).absolute()  # or a file in it (a sweep's record)
        if key in DIRS and (named in (made, *made.parents) or made in named.parents):
            return (
                f"{arg}: the {DIRS[key]} directory cannot be made there ({error.strerror}: "
                f"{error.filename}); give a directory that can be created"
            )
    return None


def unreadable(error: OverrideParseException) -> str:
    """An override Hydra's grammar cannot read, named (Hydra's message may leave it out),
    with the usual cause: a character the grammar reads itself, unquoted."""
    lines = str(error).splitlines()
    skip = ("Error parsing override", "Error when parsing index", "See https")  # 1.3, 1.4
    reason = "; ".join(x for x in lines if x.strip() not in ("", "^") and not x.startswith(skip))
    key, equals, value = error.override.partition("=")
    # Hydra's quotes in the shell's: a value holding ' takes them the other way round
    quoted = f"'{key}=\"{value}\"'" if "'" not in value else f"\"{key}='{value}'\""
    if not equals and not key.startswith("~"):
        fix = "an override is key=value (+key=value adds a key, ~key deletes one)"
    elif key.startswith(("'", '"')):  # `'"loss.formula=(pred - y)**2"'`
        fix = f"Hydra's quotes go around the value only: '{key[1:]}=\"{value[:-1]}\"'"
    elif value.partition("(")[0] in SWEEP_FUNCTIONS:  # quoted, it would be a string
        fix = (
            f"{value.partition('(')[0]}(...) is Hydra's sweep syntax: check its parentheses and "
            "arguments, with shell quotes around the whole override "
            "(https://hydra.cc/docs/advanced/override_grammar/extended/)"
        )
    elif value.startswith(("[", "{")):  # a list or dict, which the shell split at its spaces?
        fix = (
            "a list or dict reaches Hydra whole, its brackets balanced, in shell quotes "
            f"around the whole override: '{key}={value}...'"
        )
    elif any(c in value for c in "()[]{}',") and value[:1] not in "'\"":
        fix = (
            "Hydra's grammar reads ( ) [ ] { } ' , itself: quote the value twice, shell "
            f"quotes around Hydra quotes: {quoted}"
        )
    elif not value.isascii() and value[:1] not in "'\"":  # `dataset.y=température`
        fix = f"Hydra reads letters beyond ASCII only in quotes: {quoted}"
    elif value[:1] not in "'\"":  # `=`, `;` and others the grammar reads itself, unquoted
        fix = f"quote the value twice, shell quotes around Hydra quotes: {quoted}"
    else:
        fix = "the override grammar: https://hydra.cc/docs/advanced/override_grammar/basic"
    return f"{error.override}: Hydra cannot read this override ({reason}); {fix}"
