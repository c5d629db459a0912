"""MkDocs hook: fill the reference pages from the code at build time, so they cannot drift.

A page asks for generated content with a marker line of its own, e.g.
``<!-- generated: cli -->``; :func:`on_page_markdown` replaces the marker with Markdown built
from the live objects:

- ``cli``: every command of the ``archer`` argparse parser, subcommands recursively
  (``archer_cli.main.build_parser``, falling back to ``archer.cli.build_parser``);
- ``config``: every field of the config dataclasses with its type, default and the trailing
  ``# comment`` it carries in the source (read with ``ast`` and ``tokenize``);
- ``presets``: the method presets of ``experiments/conf/preset/*.yaml``;
- ``metrics``: the trainer's ``STEP_METRICS``, grouped by namespace, with the descriptions
  kept below.

A generator that fails (an import error, a config field without a comment) fails the build.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import importlib.util
import inspect
import io
import logging
import re
import sys
import textwrap
import tokenize
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:  # the checkout being documented, not an installed copy
    sys.path.insert(0, str(REPO_ROOT))

log = logging.getLogger("mkdocs.hooks.gen_reference")
MARKER = re.compile(r"^<!-- generated: ([a-z_]+) -->$", re.MULTILINE)

# The config classes documented, in page order: (module, class name).
CONFIG_CLASSES = (
    ("archer.config", "AlgoConfig"),
    ("archer.config", "TokenClassConfig"),
    ("archer.train_config", "TrainConfig"),
    ("archer.train_config", "DataConfig"),
    ("archer.train_config", "DistributedConfig"),
)
# Where a Hydra/CLI override reaches each class (`archer train KEY=value`).
CONFIG_PREFIX = {
    "AlgoConfig": "`algo.KEY=value`",
    "TokenClassConfig": "`algo.high.KEY=value` and `algo.low.KEY=value`",
    "TrainConfig": "`KEY=value` at the root (the composed config is a TrainConfig)",
    "DataConfig": "`data.KEY=value`",
    "DistributedConfig": "`distributed.KEY=value`",
}
PARSER_BUILDERS = ("archer_cli.main:build_parser",)


# --------------------------------------------------------------------------------------
# Markdown helpers
# --------------------------------------------------------------------------------------


def cell(text: Any) -> str:
    """One Markdown table cell: no newlines, pipes escaped, angle brackets kept literal."""
    out = " ".join(str(text).split())
    return out.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")


def code(text: Any) -> str:
    """Inline code inside a table cell (pipes still need escaping there)."""
    out = " ".join(str(text).split()).replace("|", "\\|")
    return f"`{out}`" if out else ""


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# CLI reference
# --------------------------------------------------------------------------------------


def _in_checkout(module_name: str) -> bool:
    """Whether ``module_name`` resolves to a file of the checkout being documented (an
    installed copy elsewhere, e.g. another clone's editable install, does not count)."""
    try:
        spec = importlib.util.find_spec(module_name)
    except ModuleNotFoundError:  # a parent package is missing
        return False
    return bool(spec and spec.origin and Path(spec.origin).resolve().is_relative_to(REPO_ROOT))


def load_parser() -> argparse.ArgumentParser:
    """The ``archer`` parser from the first builder that exists in this checkout."""
    errors = []
    for spec in PARSER_BUILDERS:
        module_name, func_name = spec.split(":")
        if not _in_checkout(module_name):
            errors.append(f"{module_name}: not in {REPO_ROOT}")
            continue
        module = importlib.import_module(module_name)
        builder = getattr(module, func_name, None)
        if builder is None:
            errors.append(f"{module_name} has no {func_name}()")
            continue
        return builder()
    raise RuntimeError("no argparse builder for the CLI reference: " + "; ".join(errors))


def _subcommands(parser: argparse.ArgumentParser):
    """(name, help, subparser) for each subcommand of ``parser``, in definition order; an
    alias is folded into its command's help ("alias: presets") instead of a second entry."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            names: dict[int, list[str]] = {}
            for name, sub in action.choices.items():
                names.setdefault(id(sub), []).append(name)
            for name, sub in action.choices.items():
                primary, *aliases = names[id(sub)]
                if name != primary:
                    continue
                help_ = helps.get(name) or ""
                if aliases:
                    help_ += f" (alias: {', '.join(aliases)})"
                yield name, help_, sub


def _option_row(parser: argparse.ArgumentParser, action: argparse.Action) -> list[str]:
    names = ", ".join(action.option_strings) or (action.metavar or action.dest)
    if action.nargs in ("*", "+") and not action.option_strings:
        names += " ..."
    takes = ""
    if action.option_strings and action.nargs != 0:
        takes = action.metavar or action.dest.upper()
    if action.choices and not isinstance(action, argparse._SubParsersAction):
        takes = "{" + ",".join(map(str, action.choices)) + "}"
    default = action.default
    hidden = default is None or default is False or default == [] or default == argparse.SUPPRESS
    shown = "" if hidden or not action.option_strings else code(default)
    helptext = action.help or ""
    if "%" in helptext:
        helptext = parser._get_formatter()._expand_help(action)
    return [code(names), code(takes), shown, cell(helptext)]


def _command_section(path: list[str], helptext: str, parser: argparse.ArgumentParser) -> list[str]:
    title = " ".join(path)
    out = [f"## `{title}`", ""]
    description = parser.description or helptext
    if description:
        out += [textwrap.fill(" ".join(description.split()), 96), ""]
    usage = " ".join(parser.format_usage().split())
    out += ["```text", usage.removeprefix("usage: "), "```", ""]
    rows = [_option_row(parser, a) for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
            and a.help != argparse.SUPPRESS]  # hidden (e.g. deprecated) spellings stay hidden
    if rows:
        out += [table(["argument", "value", "default", "what it does"], rows), ""]
    if parser.epilog:  # e.g. the key=value settings a command lists after its options
        out += ["```text", parser.epilog.strip("\n"), "```", ""]
    subs = list(_subcommands(parser))
    if subs:
        out += ["Subcommands: " + ", ".join(f"`{title} {name}`" for name, _, _ in subs), ""]
    for name, sub_help, sub in subs:
        out += _command_section([*path, name], sub_help, sub)
    return out


def render_cli() -> str:
    parser = load_parser()
    top = [name for name, _, _ in _subcommands(parser)]
    rows = [[f"`archer {name}`", cell(h)] for name, h, _ in _subcommands(parser)]
    out = [table(["command", "what it does"], rows), ""]
    for name, sub_help, sub in _subcommands(parser):
        out += _command_section([parser.prog, name], sub_help, sub)
    if not top:
        raise RuntimeError("the archer parser has no subcommands")
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# Config reference
# --------------------------------------------------------------------------------------


def _comments_by_line(source: str) -> dict[int, tuple[str, bool]]:
    """Line number -> (comment text without '#', whether the line holds only the comment)."""
    out = {}
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    line_has_code: dict[int, bool] = {}
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            only = not line_has_code.get(tok.start[0], False)
            out[tok.start[0]] = (tok.string[1:], only)
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                              tokenize.ENCODING, tokenize.ENDMARKER):
            for line in range(tok.start[0], tok.end[0] + 1):
                line_has_code[line] = True
    return out


def _field_comment(node: ast.AnnAssign, comments: dict[int, tuple[str, bool]]) -> str:
    """The field's comment: trailing comments on its lines plus indented continuation
    comment lines below it (``#   more``); failing that, the comment block just above."""
    parts = [comments[n][0].strip() for n in range(node.lineno, node.end_lineno + 1)
             if n in comments and not comments[n][1]]
    if parts:
        line = node.end_lineno + 1
        while line in comments and comments[line][1] and comments[line][0].startswith("  "):
            parts.append(comments[line][0].strip())
            line += 1
        return " ".join(parts)
    above, line = [], node.lineno - 1
    while line in comments and comments[line][1]:
        text = comments[line][0]
        if text.startswith("  ") or text.strip().startswith("-"):  # the field above's
            break  # continuation, or a "# --- section ---" rule
        above.insert(0, text.strip())
        line -= 1
    return " ".join(above)


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        return repr(f.default)
    if f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
        if dataclasses.is_dataclass(value):
            changed = {g.name: getattr(value, g.name) for g in dataclasses.fields(value)
                       if g.default is not dataclasses.MISSING
                       and getattr(value, g.name) != g.default}
            inner = ", ".join(f"{k}={v!r}" for k, v in changed.items())
            return f"{type(value).__name__}({inner})"
        return repr(value)
    return "(required)"


def _type_text(node: ast.AnnAssign, source: str) -> str:
    return ast.get_source_segment(source, node.annotation) or ""


def config_rows(cls: type) -> list[list[str]]:
    """One row per dataclass field: name, type, default, comment."""
    source = Path(inspect.getsourcefile(cls)).read_text()
    tree = ast.parse(source)
    comments = _comments_by_line(source)
    class_node = next((n for n in ast.walk(tree)
                       if isinstance(n, ast.ClassDef) and n.name == cls.__name__), None)
    if class_node is None:
        raise RuntimeError(f"class {cls.__name__} not found in {inspect.getsourcefile(cls)}")
    nodes = {n.target.id: n for n in class_node.body
             if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}
    documented = {name for _, name in CONFIG_CLASSES}
    rows = []
    for f in dataclasses.fields(cls):
        node = nodes.get(f.name)
        if node is None:
            raise RuntimeError(f"{cls.__name__}.{f.name}: field not found in the class source")
        comment = _field_comment(node, comments)
        if not comment:
            log.warning("%s.%s has no comment in %s; every config field needs one",
                        cls.__name__, f.name, inspect.getsourcefile(cls))
        type_text = _type_text(node, source)
        if type_text in documented:
            type_text = f"[{type_text}](#{type_text.lower()})"
        else:
            type_text = code(type_text)
        rows.append([code(f.name), type_text, code(_default_text(f)), cell(comment)])
    return rows


def _docstring(obj: Any) -> str:
    """A docstring on one line, with any pointer to the algorithm spec aimed at the method
    page (older docstrings named the spec by its original file)."""
    doc = " ".join((inspect.getdoc(obj) or "").split())
    return re.sub(r"\(?ARCHER\.md,? section (\d)\)?", r"(method page, section \1)", doc)


def render_config() -> str:
    out = []
    for module_name, class_name in CONFIG_CLASSES:
        cls = getattr(importlib.import_module(module_name), class_name)
        doc = _docstring(cls)
        out += [f"## {class_name}", "",
                f"`{module_name}.{class_name}`; on the command line: {CONFIG_PREFIX[class_name]}.",
                ""]
        if doc:
            out += [textwrap.fill(doc, 96), ""]
        out += [table(["field", "type", "default", "what it does"], config_rows(cls)), ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# Presets reference
# --------------------------------------------------------------------------------------

PRESET_COLUMNS = (
    ("loss", lambda a: a.loss),
    ("rho / scope", lambda a: f"{a.entropy_quantile} / {a.entropy_scope}"),
    ("high clip (low, high)", lambda a: f"{a.high.clip_low}, {a.high.clip_high}"),
    ("low clip (low, high)", lambda a: f"{a.low.clip_low}, {a.low.clip_high}"),
    ("KL high / low", lambda a: f"{a.high.kl_weight} / {a.low.kl_weight}"),
    ("PG weight high / low", lambda a: f"{a.high.pg_weight} / {a.low.pg_weight}"),
    ("dual clip c", lambda a: a.dual_clip_c),
    ("aggregation", lambda a: a.loss_agg_mode),
    ("advantage", lambda a: a.advantage),
    ("group filter", lambda a: a.group_filter),
    ("update", lambda a: a.update_mode if a.update_mode != "async"
        else f"async ({a.async_split}, {a.async_first} first)"),
)


def render_presets() -> str:
    import yaml

    from experiments.presets import PRESET_DIR, load_preset, preset_names

    names = preset_names()
    if not names:
        raise RuntimeError(f"no presets in {PRESET_DIR}")
    presets = [load_preset(n) for n in names]
    out = [table(["preset", "paper", "implemented in"],
                 [[code(p.name), f"[{p.arxiv}](https://arxiv.org/abs/{p.arxiv}) {cell(p.title)}"
                   if p.arxiv else cell(p.title), code(p.module)] for p in presets]), "",
           "### The knobs side by side", "",
           "Resolved values (the preset over the `AlgoConfig` defaults).", ""]
    header = ["knob", *[f"`{p.name}`" for p in presets]]
    rows = [[cell(label), *[code(get(p.algo)) for p in presets]] for label, get in PRESET_COLUMNS]
    out += [table(header, rows), ""]
    for name in names:
        raw = yaml.safe_load((PRESET_DIR / f"{name}.yaml").read_text()) or {}
        set_keys = yaml.safe_dump({"algo": raw.get("algo") or {}}, sort_keys=False,
                                  default_flow_style=None).rstrip()
        out += [f"### `{name}`", "", f"`experiments/conf/preset/{name}.yaml` sets:", "",
                "```yaml", set_keys, "```", ""]
    return "\n".join(out)


# --------------------------------------------------------------------------------------
# Metrics reference
# --------------------------------------------------------------------------------------

# What each step metric holds. A metric the trainer logs that is missing here is listed as
# undescribed (and logged at build time) rather than failing the build.
METRIC_HELP = {
    "reward/mean": "mean verifier reward over the step's sampled responses",
    "reward/shaped_mean": "mean reward after shaping (DAPO's overlong penalty); equals "
                          "reward/mean when no shaping is on",
    "groups/solved_none_frac": "fraction of groups in which no response got a reward",
    "groups/solved_all_frac": "fraction of groups in which every response got the full reward",
    "groups/kept": "groups left after the all-equal group filter (what the update trains on)",
    "groups/sampled": "groups sampled in the step, over all refill rounds",
    "rollout/rounds": "rollout rounds the step needed (more than 1 only with refill)",
    "response/length_mean": "mean response length in tokens",
    "response/length_max": "longest response in tokens",
    "response/truncated_frac": "fraction of responses that hit max_new_tokens",
    "response/repetition_ratio": "mean share of repeated 4-grams per response (the paper's "
                                 "collapse signal)",
    "train/step_skipped": "1 when no group was informative and the update was skipped, else 0",
    "actor/entropy": "mean token entropy over all response tokens",
    "actor/entropy_high_entropy": "mean entropy of the high-entropy (reasoning) tokens",
    "actor/entropy_low_entropy": "mean entropy of the low-entropy (knowledge) tokens",
    "actor/tokens_high_entropy": "number of high-entropy tokens in the update",
    "actor/tokens_low_entropy": "number of low-entropy tokens in the update",
    "actor/frac_high_entropy": "share of valid tokens marked high-entropy (about 1 - rho)",
    "actor/clipfrac_high_entropy_upper": "share of high-entropy tokens whose ratio was clipped "
                                         "at 1 + eps_high (with A > 0)",
    "actor/clipfrac_high_entropy_lower": "share of high-entropy tokens clipped at 1 - eps_low "
                                         "(with A < 0)",
    "actor/clipfrac_low_entropy_upper": "the same for low-entropy tokens, upper bound",
    "actor/clipfrac_low_entropy_lower": "the same for low-entropy tokens, lower bound",
    "actor/pg_contrib_high_entropy": "the high-entropy tokens' share of the aggregated "
                                     "policy-gradient loss",
    "actor/pg_contrib_low_entropy": "the low-entropy tokens' share; the two contributions sum "
                                    "to actor/pg_loss",
    "actor/pg_loss": "aggregated policy-gradient loss (summed over the step's optimizer steps)",
    "actor/kl_loss": "weighted KL-to-reference term of the loss",
    "actor/loss": "pg_loss + kl_loss, the value that was differentiated",
    "actor/grad_norm": "global gradient norm before clipping",
    "actor/lr": "learning rate of the step (after warm-up and schedule)",
    "actor/optimizer_steps": "optimizer steps taken in the training step",
    "actor/updates_skipped": "optimizer steps skipped because the gradient norm was not finite",
    "actor/split_change_frac": "share of tokens whose entropy class changed between PPO epochs "
                               "(0 with one epoch or entropy_source=old)",
    "rollout/mismatch_kl": "k3 estimate of KL(sampler || trainer) over response tokens",
    "rollout/mismatch_kl_k1": "the k1 (log-ratio) mean of the same gap",
    "rollout/mismatch_abs_max": "largest per-token |trainer log-prob - sampler log-prob|",
    "time/rollout": "seconds spent generating",
    "time/reward": "seconds spent in the verifier",
    "time/old_logprob": "seconds in the no-grad passes (old and reference log-probs, entropy)",
    "time/update": "seconds in forward/backward and optimizer steps",
    "time/weight_sync": "seconds pushing new weights into the rollout engine (vLLM)",
    "time/step": "wall seconds of the whole training step",
    "perf/tokens_per_s": "prompt + response tokens processed per second of the step",
    "perf/peak_memory_mb": "peak memory of the run's device in MiB",
}


def load_step_metrics() -> tuple[str, ...]:
    for module_name in ("archer.trainer", "archer.trainer.metrics"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError:
            continue
        metrics = getattr(module, "STEP_METRICS", None)
        if metrics:
            return tuple(metrics)
    raise RuntimeError("STEP_METRICS not found in archer.trainer")


def render_metrics() -> str:
    metrics = load_step_metrics()
    groups: dict[str, list[str]] = {}
    for name in metrics:
        groups.setdefault(name.split("/")[0], []).append(name)
    undescribed = [m for m in metrics if m not in METRIC_HELP]
    if undescribed:
        log.info("metrics without a description in the reference: %s", undescribed)
    out = [f"The trainer logs these {len(metrics)} metrics after every completed update "
           "step (`archer.trainer.STEP_METRICS`; the smoke test checks each one).", ""]
    for prefix, names in groups.items():
        out += [f"### `{prefix}/`", "",
                table(["metric", "what it holds"],
                      [[code(n), cell(METRIC_HELP.get(n, "(not described yet)"))]
                       for n in names]), ""]
    return "\n".join(out)


GENERATORS = {
    "cli": render_cli,
    "config": render_config,
    "presets": render_presets,
    "metrics": render_metrics,
}


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace every ``<!-- generated: NAME -->`` marker with its generated Markdown."""

    def replace(match: re.Match) -> str:
        name = match.group(1)
        if name not in GENERATORS:
            raise RuntimeError(f"{page.file.src_uri}: unknown generated section {name!r}; "
                               f"allowed: {sorted(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(replace, markdown)
