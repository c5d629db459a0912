"""The user's own reward functions: ``package.module:function`` and ``file.py:function``."""

import sys
import textwrap

import pytest

from archer.rewards import RewardSpecError, get_reward, load_user_reward

REWARD_FILE = textwrap.dedent('''
    LOADS = []
    LOADS.append(1)  # runs once per process

    def length_parity(completions, **columns):
        return [float(len(c) % 2 == 0) for c in completions]

    THRESHOLD = 0.5
''')


def test_file_reward_is_loaded_once_and_called(tmp_path, monkeypatch):
    path = tmp_path / "my_reward.py"
    path.write_text(REWARD_FILE)
    fn = get_reward(f"{path}:length_parity")
    assert fn(["ab", "abc"]) == [1.0, 0.0]
    monkeypatch.chdir(tmp_path)  # a relative path names the same file: one module
    again = load_user_reward("./my_reward.py:length_parity")
    assert again is fn and sys.modules[fn.__module__].LOADS == [1]


def test_module_reward_is_imported(tmp_path, monkeypatch):
    pkg = tmp_path / "labrewards"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "scoring.py").write_text(REWARD_FILE)
    monkeypatch.syspath_prepend(str(tmp_path))
    fn = get_reward("labrewards.scoring:length_parity")
    assert fn.__module__ == "labrewards.scoring" and fn(["", "x"]) == [1.0, 0.0]


@pytest.mark.parametrize("spec, message", [
    ("{dir}/nope.py:fn", "nope.py does not exist"),
    ("{dir}/my_reward.py:lenght_parity", r"has no 'lenght_parity' \(did you mean \['length_parity'\]"),
    ("{dir}/my_reward.py:THRESHOLD", "is a float, not a function"),
    ("{dir}/my_reward.py:", "expected a registered name"),
    (":fn", "expected a registered name"),
    ("no_such_module_xyz:fn", "cannot import module 'no_such_module_xyz'"),
    ("{dir}/broken.py:fn", "running .*broken.py failed: ZeroDivisionError"),
])
def test_bad_reward_spec_says_what_is_wrong(tmp_path, spec, message):
    (tmp_path / "my_reward.py").write_text(REWARD_FILE)
    (tmp_path / "broken.py").write_text("x = 1 / 0\n")
    with pytest.raises(RewardSpecError, match=message):
        get_reward(spec.format(dir=tmp_path))
    broken = str((tmp_path / "broken.py").resolve())  # a failed load leaves no module behind
    assert not any(getattr(m, "__file__", None) == broken for m in list(sys.modules.values()))


def _package(tmp_path, monkeypatch, name: str, files: dict[str, str]) -> None:
    pkg = tmp_path / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for fname, text in files.items():
        (pkg / fname).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    for key in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        monkeypatch.delitem(sys.modules, key)  # the same package of an earlier case


@pytest.mark.parametrize("missing, named", [
    ("no_such_dep_xyz", "no_such_dep_xyz"),
    ("no_such_dep_xyz.sub", "no_such_dep_xyz"),  # the top-level package is what is missing
    ("labdeps.helpers", "labdeps.helpers"),  # a sibling module the reward's package lacks
])
def test_missing_dependency_of_a_reward_module_is_named_as_such(tmp_path, monkeypatch, missing,
                                                                 named):
    """The reward module exists but imports something that does not: the message names that
    dependency, not the reward module (which would send the user looking for a typo)."""
    _package(tmp_path, monkeypatch, "labdeps", {"scoring.py": f"import {missing}\n" + REWARD_FILE})
    with pytest.raises(RewardSpecError) as info:
        get_reward("labdeps.scoring:length_parity")
    msg = str(info.value)
    assert f"'labdeps.scoring' needs {named!r}, which is not installed" in msg
    assert "cannot import module" not in msg


@pytest.mark.parametrize("spec", ["labmissing.scoring:fn", "labpkg.nope:fn", "labpkg.nope.deeper:fn"])
def test_missing_reward_module_or_parent_says_cannot_import(tmp_path, monkeypatch, spec):
    _package(tmp_path, monkeypatch, "labpkg", {})
    target = spec.split(":")[0]
    with pytest.raises(RewardSpecError, match=f"cannot import module '{target}'"):
        get_reward(spec)
