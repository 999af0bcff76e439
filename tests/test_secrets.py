"""Secrets never stored or printed: a storage URL's password, in either form, is masked in every line and left out
of what the study keeps."""

import optuna
import pytest

from search import optuna_compat as compat
from search.study.storage import mask, scrub
from search.study.study_file import load_study_file, open_study


@pytest.mark.parametrize("url, secrets, shown", [
    ("postgresql://u:pw1@h:5432/db", ["pw1"], "postgresql://u:***@h:5432/db"),
    ("postgresql://u@h/db?password=pw2", ["pw2"], "postgresql://u@h/db?password=***"),
    ("mysql+pymysql://u:pw3@h/db?charset=utf8mb4&sslpassword=pw4", ["pw3", "pw4"],
     "mysql+pymysql://u:***@h/db?charset=utf8mb4&sslpassword=***"),
    ("postgresql://u@h/db?sslmode=require&auth_token=pw5", ["pw5"], "postgresql://u@h/db?auth_token=***&sslmode=require"),
])
def test_mask_hides_the_password_in_the_authority_and_in_the_query(url, secrets, shown):
    assert mask(url) == shown
    assert not any(s in mask(url) for s in secrets)
    line = f"connection to h failed: password {' and '.join(secrets)} rejected"
    assert not any(s in scrub(line, url) for s in secrets)
    assert "***" in scrub(line, url)


def test_mask_leaves_urls_without_secrets_alone():
    for url in ("sqlite:///studies/x.db", "journal:studies/x.log", "postgresql://u@h/db?sslmode=require"):
        assert mask(url) == url


def test_the_study_keeps_no_storage_url(tmp_path):
    (tmp_path / "space.yaml").write_text("params:\n  arch: {value: resnet20}\n  width: {value: 0.25}\n")
    url = f"sqlite:///{tmp_path / 's.db'}"
    path = tmp_path / "s.yaml"
    # the file names a server with a password; --storage (here a SQLite file) wins, as a user's flag would
    path.write_text(f"name: s\nspace: {tmp_path / 'space.yaml'}\nstorage: postgresql://u:hunter2@db/s?password=x9\n"
                    f"data: {{name: digits}}\n")
    open_study(load_study_file(path, storage=url))
    study = optuna.load_study(study_name="s", storage=url)
    storage = compat.storage_of(study)
    stored = repr(study.user_attrs) + repr(storage.get_study_system_attrs(storage.get_study_id_from_name("s")))
    assert "hunter2" not in stored and "x9" not in stored and "storage" not in study.user_attrs["micronet_config"]
