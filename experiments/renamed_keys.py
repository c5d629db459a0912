"""Keys of the old config layout, refused with their new names.

The composed config of ``archer train`` used to nest the run's knobs under ``trainer.*``
(``trainer.steps`` for ``total_steps``), the reward and the template under ``data.*`` and the
model under ``model.path``; ``archer sft`` nested its knobs under ``sft.*``. The tree now
mirrors the config dataclasses (``TrainConfig``, ``SFTConfig``): a key's path in YAML is its
path in code. An old key is not silently mapped (a study or recipe file would keep the old
spelling forever): it fails saying what to write instead. docs/config-migration.md lists every
renamed key.
"""

from __future__ import annotations

from archer.validation import ConfigError

MIGRATION_DOC = "docs/config-migration.md"
# old dotted prefix -> new prefix, per command ("config": archer train, "sft": archer sft);
# the longest matching prefix wins
RENAMED_PREFIXES: dict[str, dict[str, str]] = {
    "config": {"trainer.steps": "total_steps", "trainer.": "", "data.reward": "reward",
               "data.template": "template", "model.path": "model",
               "steps": "total_steps"},  # `steps` is `archer sft`'s, not TrainConfig's
    "sft": {"sft.": "", "data.reward": "reward", "data.template": "template",
            "model.path": "model"},
}
REMOVED_GROUPS = {"trainer": "the trainer group is gone: every TrainConfig field is set at the "
                             "top level (total_steps=30, lr=3e-4)"}


def renamed(key: str, config_name: str = "config") -> str | None:
    """The new name of the old dotted ``key`` (``trainer.steps`` -> ``total_steps``), or None
    when ``key`` is not an old one."""
    table = RENAMED_PREFIXES.get(config_name, {})
    for old in sorted(table, key=len, reverse=True):
        if old.endswith("."):
            if key.startswith(old) and len(key) > len(old):
                return table[old] + key[len(old):]
        elif key == old or key.startswith(old + "."):
            return table[old] + key[len(old):]
    return None


def _split(override: str) -> tuple[str, str, str | None]:
    """``(prefix, key, value)`` of a Hydra override: ``+trainer.lr=1`` -> ``('+', 'trainer.lr',
    '1')``, ``~trainer.lr`` -> ``('~', 'trainer.lr', None)``."""
    body = override.lstrip("+~")
    prefix = override[:len(override) - len(body)]
    key, sep, value = body.partition("=")
    return prefix, key.strip(), value if sep else None


def check_renamed(overrides: list[str], config_name: str = "config") -> None:
    """Refuse the first override of ``overrides`` that sets an old key, naming the new one:
    ``trainer.steps was renamed: use total_steps=3``."""
    for override in overrides:
        prefix, key, value = _split(override)
        if value is not None and key in REMOVED_GROUPS and config_name == "config":
            raise ConfigError(f"{key}={value}: {REMOVED_GROUPS[key]} ({MIGRATION_DOC})")
        new = renamed(key, config_name)
        if new is None:
            continue
        keep = "~" if "~" in prefix else ""  # a deletion stays one; `+` is not needed
        use = f"{keep}{new}" + ("" if value is None else f"={value}")
        raise ConfigError(f"{key} was renamed: use {use} ({MIGRATION_DOC} lists the renamed "
                          "keys)")


def check_renamed_key(where: str, key: str, config_name: str = "config") -> None:
    """A study axis or sweep param that names an old key fails naming the new one
    (``where``: e.g. ``"study s: axis"``)."""
    new = renamed(key, config_name)
    if new is not None:
        raise ConfigError(f"{where} {key!r} was renamed: use {new!r} ({MIGRATION_DOC} lists "
                          "the renamed keys)")
