"""The break-glass group: members may activate an emergency grant without approval."""

from django.db import migrations


def create(apps, schema_editor):
    apps.get_model("auth", "Group").objects.get_or_create(name="break-glass")


def remove(apps, schema_editor):
    apps.get_model("auth", "Group").objects.filter(name="break-glass").delete()


class Migration(migrations.Migration):
    dependencies = [("identity", "0002_roles")]

    operations = [migrations.RunPython(create, remove)]
