"""Merge runs become jobs of the shared job seam (mergehub/jobs): queue, attempts and worker
fields, history indexes, the bytes-saved column; task ids and the scheduled reaper go (the
worker's watchdog reaps, never behind a queue)."""

from django.db import migrations, models

from mergehub.runs.figures import bytes_saved

REAPER = "mergehub: reap stale runs"


def fill_bytes_saved(apps, schema_editor):
    MergeRun = apps.get_model("runs", "MergeRun")
    for run in MergeRun.objects.filter(status="succeeded").only("metrics").iterator():
        MergeRun.objects.filter(pk=run.pk).update(expert_bytes_saved=bytes_saved(run.metrics or {}))


def drop_schedule(apps, schema_editor):
    apps.get_model("django_q", "Schedule").objects.filter(name=REAPER).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("runs", "0002_reaper_schedule"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name='mergerun',
            name='runs_merger_team_id_d669ec_idx',
        ),
        migrations.RenameIndex(
            model_name='mergerun',
            new_name='run_heartbeats',
            old_name='runs_merger_status_7e3157_idx',
        ),
        migrations.RemoveField(
            model_name='mergerun',
            name='task_id',
        ),
        migrations.AddField(
            model_name='mergerun',
            name='attempts',
            field=models.PositiveSmallIntegerField(default=0),
        ),
        migrations.AddField(
            model_name='mergerun',
            name='expert_bytes_saved',
            field=models.BigIntegerField(blank=True, null=True),
        ),
        migrations.AddField(
            model_name='mergerun',
            name='queue',
            field=models.CharField(default='cpu', max_length=20),
        ),
        migrations.AddField(
            model_name='mergerun',
            name='worker',
            field=models.CharField(blank=True, max_length=200),
        ),
        migrations.AddIndex(
            model_name='mergerun',
            index=models.Index(fields=['team', '-created_at'], name='run_team_recent'),
        ),
        migrations.AddIndex(
            model_name='mergerun',
            index=models.Index(fields=['team', 'status', '-created_at'], name='run_team_status_recent'),
        ),
        migrations.AddIndex(
            model_name='mergerun',
            index=models.Index(fields=['team', 'method', '-created_at'], name='run_team_method_recent'),
        ),
        migrations.AddIndex(
            model_name='mergerun',
            index=models.Index(fields=['team', 'author', '-created_at'], name='run_team_author_recent'),
        ),
        migrations.AddIndex(
            model_name='mergerun',
            index=models.Index(fields=['status', 'queue', 'created_at'], name='run_claim_order'),
        ),
        migrations.AddIndex(
            model_name='mergerun',
            index=models.Index(fields=['team', 'status', 'expert_bytes_saved'], name='run_team_status_saved'),
        ),
        migrations.RunPython(fill_bytes_saved, migrations.RunPython.noop),
        migrations.RunPython(drop_schedule, migrations.RunPython.noop),
    ]
