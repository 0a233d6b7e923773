"""Session becomes GatewaySession (Django has a Session of its own); the table keeps its name."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [
        ("recordings", "0003_search_retention"),
        ("access", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.RenameModel("Session", "GatewaySession"),
                migrations.AlterModelTable("gatewaysession", "recordings_session"),
            ],
            database_operations=[],
        ),
    ]
