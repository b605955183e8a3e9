"""``manage.py simulate``: a seeded market driven through the real pipeline, then a report."""
import sys
import time
from dataclasses import fields
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from config.errors import ApplicationError
from marketplace.models import Organisation
from simulation.driver import SimConfig, simulate
from simulation.report import figures, write_report

HELP = {
    "suppliers": "supplier organisations", "nodes": "8-card nodes, spread over provinces and hubs",
    "buyers": "buyer organisations (mostly in the east), each with a funded wallet",
    "days": "simulated days of hourly arrivals", "orders_per_hour": "card-hour orders arriving per hour (mean)",
    "token_orders_per_hour": "token orders arriving per hour (mean)", "failures": "node failures during the run",
    "background_load": "share of capacity already rented by incumbents at the start", "seed": "random seed",
    "token_endpoint_share": "share of H800, H20 and 910B nodes serving tokens instead of selling card-hours",
}


class Command(BaseCommand):
    help = ("Create a seeded market and drive it through the real services, matching rounds, metering and "
            "billing on a simulated clock; write a text report and PNG charts. Needs PostgreSQL.")

    def add_arguments(self, parser):
        for f in fields(SimConfig):
            parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=f.default,
                                help=f"{HELP[f.name]} (default {f.default})")
        parser.add_argument("--out", default=str(Path(settings.VAR_DIR) / "simulation"),
                            help="folder for report.txt and the PNG charts (default var/simulation)")
        parser.add_argument("--hindsight-seconds", type=float, default=30.0,
                            help="time budget for the offline optimum's LP bound (0: skip it; default 30)")
        parser.add_argument("--unless-present", action="store_true",
                            help="do nothing if this database already holds a simulated market (make run uses it)")

    def handle(self, *args, **options):
        if options["unless_present"] and Organisation.objects.filter(slug__startswith="sim").exists():
            self.stdout.write(f"A simulated market is already in this database; its report: {options['out']}")
            return
        config = SimConfig(**{f.name: options[f.name] for f in fields(SimConfig)})
        started = time.monotonic()
        try:
            run = simulate(config, progress=self._progress)
        except ApplicationError as exc:
            raise CommandError(exc.message)
        sys.stderr.write("\n")
        data = figures(run, hindsight_seconds=options["hindsight_seconds"])
        files = write_report(run, data, Path(options["out"]))
        reported = time.monotonic() - started - run.wall_seconds
        self.stdout.write(f"simulated in {run.wall_seconds:.0f} s, reported in {reported:.0f} s "
                          f"(the offline optimum's LP {data['hindsight_seconds']:.0f} s); report and charts: "
                          + ", ".join(str(f) for f in files))
        # the report ends with its headline figures as one JSON object: the command's last line
        self.stdout.write(files[0].read_text().rstrip("\n"))

    def _progress(self, done: int, total: int, what: str) -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {what:<28}")
        sys.stderr.flush()
