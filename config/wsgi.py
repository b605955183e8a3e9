import gc
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.local")
application = get_wsgi_application()
# Django, the apps and their imports leave a large heap that lives as long as the worker: frozen,
# the collector's full passes no longer walk it (one costs ~80 ms in a process this size and showed
# as p99 spikes of the API bench), as the gateway does (gateway/app.py).
gc.collect()
gc.freeze()
