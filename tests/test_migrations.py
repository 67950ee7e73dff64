"""makemigrations on an app that declares types writes a migration, and a second run finds no changes."""

import io
import sys

import pytest
from django.core.management import call_command
from django.test import override_settings


@pytest.fixture
def migrations_package(tmp_path, monkeypatch):
    package = tmp_path / "scratch_migrations"
    package.mkdir()
    (package / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield package
    for name in [n for n in sys.modules if n.startswith("scratch_migrations")]:
        del sys.modules[name]


def makemigrations():
    out = io.StringIO()
    call_command("makemigrations", "testapp", interactive=False, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_migration_written_then_stable(migrations_package):
    with override_settings(MIGRATION_MODULES={"testapp": "scratch_migrations"}):
        first = makemigrations()
        assert "Create model ThermometerDevice" in first
        written = sorted(p.name for p in migrations_package.glob("0*.py"))
        assert written == ["0001_initial.py"]
        source = (migrations_package / "0001_initial.py").read_text()
        assert "related_name='readings'" in source
        assert "fields=['device', 'timestamp']" in source
        assert "No changes detected" in makemigrations()


@pytest.mark.django_db
def test_committed_migrations_match_the_models():
    out = io.StringIO()
    call_command("makemigrations", "devicetypes", "testapp", check=True, dry_run=True, stdout=out)
    assert "No changes detected" in out.getvalue()
