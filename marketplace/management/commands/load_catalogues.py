from django.core.management.base import BaseCommand

from marketplace.catalogue import load_catalogues
from marketplace.models import AIModel, ChipType, Region


class Command(BaseCommand):
    help = "Upsert regions, chip types and AI models from the project's CSV fixtures."

    def handle(self, *args, **options):
        counts = load_catalogues(Region=Region, ChipType=ChipType, AIModel=AIModel)
        self.stdout.write(f"catalogues loaded: {counts}")
