"""Settings shared by every environment. Everything that differs comes from the environment.

Environment variables: ``DATABASE_URL``, ``REDIS_URL``, ``CELERY_BROKER_URL``, ``SECRET_KEY``,
``DEBUG``, ``ALLOWED_HOSTS``. The local defaults need no server (SQLite, kombu's filesystem
transport); tests and production use PostgreSQL and Redis.
"""
from pathlib import Path
import os

import dj_database_url
from celery.schedules import crontab

BASE_DIR = Path(__file__).resolve().parent.parent.parent
VAR_DIR = Path(os.environ.get("SANDUISAN_VAR_DIR", BASE_DIR / "var"))

# "production" only in config.settings.production; seed_demo refuses to run there.
ENVIRONMENT = "local"

DEFAULT_SECRET_KEY = "insecure-local-only-secret-key-change-me"
SECRET_KEY = os.environ.get("SECRET_KEY", DEFAULT_SECRET_KEY)
DEBUG = os.environ.get("DEBUG", "0") == "1"
ALLOWED_HOSTS = [h for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1],testserver").split(",") if h]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "marketplace",
    "matching",
    "billing",
    "lifecycle",
    "audit",
    "gateway",
    "dashboard",
    "config.api",
]

MIDDLEWARE = [
    "config.middleware.RequestIdMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "config.api.limits.ApiRequestLimitsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"
CSRF_FAILURE_VIEW = "config.api.errors.csrf_failure"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]


def database_from_env(default_url: str) -> dict:
    # Health checks: a connection kept between requests is tested before reuse, so a restarted
    # PostgreSQL costs a reconnect, not a 500.
    config = dj_database_url.parse(os.environ.get("DATABASE_URL", default_url), conn_max_age=60,
                                   conn_health_checks=True)
    config["ATOMIC_REQUESTS"] = False  # services open their own transactions
    return config


DATABASES = {"default": database_from_env(f"sqlite:///{VAR_DIR / 'db.sqlite3'}")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"

REDIS_URL = os.environ.get("REDIS_URL", "")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django_redis.cache.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": "sanduisan",
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

# Celery: JSON only, explicit limits, acks late so a crashed worker's task is redelivered
# (every task is idempotent, so redelivery is safe).
_FS_BROKER_DIR = VAR_DIR / "celery-broker"
CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL == "filesystem://":
    for sub in ("in", "processed", "control"):
        (_FS_BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_FS_BROKER_DIR / "in"),
        "data_folder_out": str(_FS_BROKER_DIR / "in"),
        "processed_folder": str(_FS_BROKER_DIR / "processed"),
        "control_folder": str(_FS_BROKER_DIR / "control"),  # kombu's default is ./control
        "store_processed": False,
    }
if os.environ.get("CELERY_VISIBILITY_TIMEOUT"):
    # How long an unacknowledged task waits before another worker gets it (Redis broker).
    # With a short timeout, sweep for such tasks often too (kombu's default sweep is ~100 s).
    _visibility = int(os.environ["CELERY_VISIBILITY_TIMEOUT"])
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": _visibility,
                                       "unacked_restore_interval": max(1, _visibility // 4),
                                       "unacked_restore_throttle": 1}
CELERY_RESULT_BACKEND = os.environ.get("CELERY_RESULT_BACKEND", None) or None
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CELERY_TASK_DEFAULT_QUEUE", "celery")
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_TIME_LIMIT = 300
CELERY_TASK_SOFT_TIME_LIMIT = 240
CELERY_TIMEZONE = "UTC"
CELERY_BEAT_SCHEDULE = {
    "orders-expire": {"task": "marketplace.orders_expire", "schedule": 300.0},
    "matching-rounds": {"task": "matching.run_all_rounds", "schedule": 60.0},
    "holds-expire": {"task": "billing.holds_expire", "schedule": 60.0},
    "allocations-close-due": {"task": "lifecycle.allocations_close_due", "schedule": 60.0},
    "reviews-expire-due": {"task": "lifecycle.reviews_expire_due", "schedule": 60.0, "options": {"expires": 55}},
    "settle-due": {"task": "billing.settle_due", "schedule": 300.0},
    "invoices-monthly": {"task": "billing.invoices_issue_monthly", "schedule": crontab(minute=30, hour=0, day_of_month=1)},
    "idempotency-purge": {"task": "marketplace.idempotency_records_purge", "schedule": 3600.0},
    "gateway-endpoints-check": {"task": "gateway.endpoints_check", "schedule": 60.0},
    "gateway-usage-flush": {"task": "gateway.usage_flush", "schedule": 10.0},
    "gateway-reconcile": {"task": "gateway.usage_reconcile", "schedule": 300.0},
}
# celery beat's own state (last run times) lives under var/, never in the repository root.
VAR_DIR.mkdir(parents=True, exist_ok=True)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "marketplace.authentication.ApiKeyAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["marketplace.permissions.IsOrganisationMember"],
    "DEFAULT_PAGINATION_CLASS": "config.api.pagination.DefaultPagination",
    "PAGE_SIZE": 50,
    # JSON only: one body format to document, validate and bound (config.api.limits).
    "DEFAULT_PARSER_CLASSES": ["config.api.parsers.ObjectJSONParser"],
    "DEFAULT_THROTTLE_CLASSES": ["config.api.throttling.ApiRateThrottle"],
    "NUM_PROXIES": int(os.environ.get("SANDUISAN_NUM_PROXIES", "0")),
    "DEFAULT_FILTER_BACKENDS": [
        "config.api.filters.OpaqueIdFilterBackend",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_SCHEMA_CLASS": "config.api.schema.ContractAutoSchema",
    "EXCEPTION_HANDLER": "config.api.errors.exception_handler",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "COERCE_DECIMAL_TO_STRING": True,
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "Sanduisan exchange API",
    "DESCRIPTION": "Scattered GPU supply meets scattered demand: nodes, listings, orders, quotes.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and docs are public, like the index that links to them.
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "config.api.schema.errors_document"],
    "ENUM_NAME_OVERRIDES": {
        "PrecisionEnum": "marketplace.models.AIModel.Precision",
        "InterconnectEnum": "marketplace.models.Interconnect",
        "NodeStatusEnum": "marketplace.models.Node.Status",
        "ListingStatusEnum": "marketplace.models.Listing.Status",
        "OrderStatusEnum": "marketplace.models.Order.Status",
        "AllocationStatusEnum": "marketplace.models.Allocation.Status",
        "InvoiceKindEnum": "billing.models.Invoice.Kind",
        "ChargeKindEnum": "billing.models.Charge.Kind",
    },
}

# API limits (README "API in brief"; config.api.limits and config.api.throttling).
SANDUISAN_MAX_BODY_BYTES = int(os.environ.get("SANDUISAN_MAX_BODY_BYTES", str(1024 * 1024)))
SANDUISAN_MAX_JSON_DEPTH = int(os.environ.get("SANDUISAN_MAX_JSON_DEPTH", "32"))
SANDUISAN_STATEMENT_TIMEOUT_MS = int(os.environ.get("SANDUISAN_STATEMENT_TIMEOUT_MS", "5000"))
DATA_UPLOAD_MAX_MEMORY_SIZE = SANDUISAN_MAX_BODY_BYTES + 1
SANDUISAN_THROTTLE_RATES = {
    "api": os.environ.get("SANDUISAN_THROTTLE_API", "1200/minute"),
    "anon": os.environ.get("SANDUISAN_THROTTLE_ANON", "120/minute"),
    "usage": os.environ.get("SANDUISAN_THROTTLE_USAGE", "12000/minute"),
}

# Marketplace rules (documented in README).
SANDUISAN = {
    # Model fit: weights need params x bytes/param; on top of that we reserve this fraction for
    # KV cache, activations and runtime buffers unless the order asks for weights only.
    "MODEL_FIT_OVERHEAD": os.environ.get("SANDUISAN_MODEL_FIT_OVERHEAD", "0.20"),
    # Idempotency records are kept this long (hours).
    "IDEMPOTENCY_TTL_HOURS": 24,
    # New orders ask for a matching round this many seconds later (debounced per bucket).
    "AUTO_MATCH": os.environ.get("SANDUISAN_AUTO_MATCH", "1") == "1",
    "ROUND_DEBOUNCE_SECONDS": 2,
    # Billing (README "Money"): the platform's share of every charge; the service credit a buyer
    # gets when a node fails under a running allocation, as a share of the lost card-hours' value;
    # how long after its last heartbeat a running allocation stops being billed; how long after
    # an allocation's end its hold is force-closed; the prior (in delivered card-hours) that
    # keeps one early failure from sinking a new supplier's reliability.
    "COMMISSION_RATE": os.environ.get("SANDUISAN_COMMISSION_RATE", "0.08"),
    "SERVICE_CREDIT_RATE": os.environ.get("SANDUISAN_SERVICE_CREDIT_RATE", "0.25"),
    "HEARTBEAT_GRACE_SECONDS": int(os.environ.get("SANDUISAN_HEARTBEAT_GRACE_SECONDS", "300")),
    "HOLD_GRACE_HOURS": 24,
    "RELIABILITY_PRIOR_CARD_HOURS": 100,
    # A flagged match not decided within this many hours of the round (or before its allocation
    # would start, whichever is first) expires: its slots and hold are released (README "Review").
    "REVIEW_TIMEOUT_HOURS": float(os.environ.get("SANDUISAN_REVIEW_TIMEOUT_HOURS", "12")),
    # Token usage (README "Money"): reports must arrive within this many minutes of the
    # allocation's end; an endpoint listed before tokens_per_minute existed serves this many
    # tokens a minute per card.
    "USAGE_REPORT_GRACE_MINUTES": int(os.environ.get("SANDUISAN_USAGE_REPORT_GRACE_MINUTES", "60")),
    "DEFAULT_TOKENS_PER_MINUTE_PER_CARD": 1_000_000,
    # A buyer may dispute a charge for this many days after it is booked.
    "DISPUTE_WINDOW_DAYS": int(os.environ.get("SANDUISAN_DISPUTE_WINDOW_DAYS", "30")),
    # Separation of duties (README "Money"): a top-up or refund above this many CNY is only a
    # request until a second, different admin with the same permission approves it.
    "SECOND_APPROVAL_ABOVE": os.environ.get("SANDUISAN_SECOND_APPROVAL_ABOVE", "10000"),
    # Crash tests only: hold a round's transaction open this long before it commits.
    "PERSIST_PAUSE_SECONDS": float(os.environ.get("SANDUISAN_PERSIST_PAUSE_SECONDS", "0")),
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "WARNING")},
}

# The token gateway (README "Token gateway"). The credential key encrypts suppliers' endpoint
# credentials (Fernet, urlsafe base64 of 32 bytes); without one it is derived from SECRET_KEY, so a
# database dump alone never reveals a credential either way.
SANDUISAN_GATEWAY = {
    "CREDENTIAL_KEY": os.environ.get("SANDUISAN_GATEWAY_CREDENTIAL_KEY", ""),
    "REQUESTS_PER_MINUTE": int(os.environ.get("SANDUISAN_GATEWAY_REQUESTS_PER_MINUTE", "600")),
    "TOKENS_PER_MINUTE": int(os.environ.get("SANDUISAN_GATEWAY_TOKENS_PER_MINUTE", "2000000")),
    # Seconds to wait for an upstream's response headers before failing over; and between chunks.
    "CONNECT_TIMEOUT": float(os.environ.get("SANDUISAN_GATEWAY_CONNECT_TIMEOUT", "3")),
    "FIRST_BYTE_TIMEOUT": float(os.environ.get("SANDUISAN_GATEWAY_FIRST_BYTE_TIMEOUT", "30")),
    "READ_TIMEOUT": float(os.environ.get("SANDUISAN_GATEWAY_READ_TIMEOUT", "60")),
    # Seconds an idle pooled upstream connection is kept. Below the 5 s after which common
    # upstream servers (uvicorn, hence vLLM and SGLang) close idle connections: reusing one just
    # as the server closes it would fail the request over and count against a healthy endpoint.
    "UPSTREAM_KEEPALIVE": float(os.environ.get("SANDUISAN_GATEWAY_UPSTREAM_KEEPALIVE", "4")),
    # In-process cache lifetime of keys, routes and prices (seconds).
    "CACHE_TTL": float(os.environ.get("SANDUISAN_GATEWAY_CACHE_TTL", "5")),
    # Circuit breaker: this many consecutive failures open an endpoint for this many seconds.
    "BREAKER_FAILURES": int(os.environ.get("SANDUISAN_GATEWAY_BREAKER_FAILURES", "3")),
    "BREAKER_SECONDS": float(os.environ.get("SANDUISAN_GATEWAY_BREAKER_SECONDS", "30")),
    # Output tokens reserved against the budget when a request sets no max_tokens.
    "DEFAULT_OUTPUT_RESERVE": int(os.environ.get("SANDUISAN_GATEWAY_DEFAULT_OUTPUT_RESERVE", "1024")),
    # Reconciliation: supplier claims differing from the exchange's meter by more than this share
    # (and more than MIN tokens) are flagged.
    "RECONCILE_TOLERANCE": os.environ.get("SANDUISAN_GATEWAY_RECONCILE_TOLERANCE", "0.02"),
    "RECONCILE_MIN_TOKENS": int(os.environ.get("SANDUISAN_GATEWAY_RECONCILE_MIN_TOKENS", "1000")),
    # Reliability: gateway request outcomes smoothed by this many successful requests.
    "RELIABILITY_PRIOR_REQUESTS": 100,
}
