"""Session fixtures of the dashboard tests (helpers in ``dashboard_fixtures.py``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from dashboard_fixtures import fabricate_optuna, fabricate_study


@pytest.fixture(scope="session")
def baselines_store(tmp_path_factory):
    """A store holding one fabricated ``baselines`` study (grpo, archer, dapo x 2 seeds)."""
    root = tmp_path_factory.mktemp("mlflow_baselines")
    uri = f"sqlite:///{root}/mlflow.db"
    ids = fabricate_study(uri, root)
    return SimpleNamespace(uri=uri, root=root, ids=ids)


@pytest.fixture(scope="session")
def site(baselines_store, tmp_path_factory):
    """The dashboards built over the fabricated store and an Optuna sweep."""
    from dashboards.site import build_site

    root = tmp_path_factory.mktemp("site")
    storage = f"sqlite:///{root}/optuna.db"
    fabricate_optuna(storage)
    paths = build_site(baselines_store.uri, root / "site", optuna_storage=storage)
    return SimpleNamespace(dir=root / "site", paths=paths, storage=storage,
                           uri=baselines_store.uri)
