"""Migration operations for the hub's own apps.

On SQLite, Django's ``AlterField`` rebuilds the whole table (copies every row) even when only a field's
``db_index`` changes. ``DropFieldIndex`` inside ``SeparateDatabaseAndState`` drops just the index, so
the migrations that slimmed the catalogue's tables cost an index drop, not a table copy.
"""

from django.db import migrations
from django.db.models import Index


class DropFieldIndex(migrations.operations.base.Operation):
    """Drop the index a field's ``db_index`` (or ForeignKey) created; the reverse creates it again."""

    reduces_to_sql = True
    reversible = True

    def __init__(self, model_name, field_name):
        self.model_name = model_name
        self.field_name = field_name

    def deconstruct(self):
        return self.__class__.__qualname__, [self.model_name, self.field_name], {}

    def state_forwards(self, app_label, state):
        pass  # the state changes with the AlterField next to it in SeparateDatabaseAndState

    def database_forwards(self, app_label, schema_editor, from_state, to_state):
        model = from_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        field = model._meta.get_field(self.field_name)
        meta_indexes = {index.name for index in model._meta.indexes}
        for name in schema_editor._constraint_names(
            model, [field.column], index=True, type_=Index.suffix, exclude=meta_indexes
        ):
            schema_editor.execute(schema_editor._delete_index_sql(model, name))

    def database_backwards(self, app_label, schema_editor, from_state, to_state):
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        field = model._meta.get_field(self.field_name)
        schema_editor.execute(schema_editor._create_index_sql(model, fields=[field]))

    def describe(self):
        return f"Drop the index of {self.model_name}.{self.field_name}"

    @property
    def migration_name_fragment(self):
        return f"drop_index_{self.model_name.lower()}_{self.field_name.lower()}"
